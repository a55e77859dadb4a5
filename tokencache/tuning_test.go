package tokencache

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// applyOptions is New's option loop without a client: the config the
// options give, or the first error.
func applyOptions(opts ...Option) (config, error) {
	c := defaultConfig()
	for _, o := range opts {
		if err := o(&c); err != nil {
			return c, err
		}
	}
	return c, nil
}

// tuningKnobs is every Tuning field with the config field it sets: get
// reads the config field, set gives Tuning a valid non-default value, and
// want is what get returns then.
var tuningKnobs = []struct {
	field string
	get   func(config) any
	set   func(*Tuning)
	want  any
}{
	{"RefreshJitter", func(c config) any { return c.refreshJitter }, func(t *Tuning) { t.RefreshJitter = 0.3 }, 0.3},
	{"ExpirySkew", func(c config) any { return c.skew }, func(t *Tuning) { t.ExpirySkew = time.Minute }, time.Minute},
	{"LockTTL", func(c config) any { return c.lockTTL }, func(t *Tuning) { t.LockTTL = 10 * time.Millisecond }, 10 * time.Millisecond},
	{"RefreshTimeout", func(c config) any { return c.refreshTimeout }, func(t *Tuning) { t.RefreshTimeout = time.Minute }, time.Minute},
	{"L1MaxAge", func(c config) any { return c.l1MaxAge }, func(t *Tuning) { t.L1MaxAge = 30 * time.Second }, 30 * time.Second},
	{"WaitRecheck", func(c config) any { return c.waitRecheck }, func(t *Tuning) { t.WaitRecheck = 3 * time.Second }, 3 * time.Second},
	{"NegativeTTL", func(c config) any { return c.negativeTTL }, func(t *Tuning) { t.NegativeTTL = time.Minute }, time.Minute},
	{"RetryAttempts", func(c config) any { return c.maxAttempts }, func(t *Tuning) { t.RetryAttempts = 1 }, 1},
	{"RetryBase", func(c config) any { return c.backoffBase }, func(t *Tuning) { t.RetryBase = time.Second }, time.Second},
	{"RetryMax", func(c config) any { return c.backoffMax }, func(t *Tuning) { t.RetryMax = time.Minute }, time.Minute},
	{"ProbeInterval", func(c config) any { return c.probeInterval }, func(t *Tuning) { t.ProbeInterval = time.Hour }, time.Hour},
	{"ProbeTimeout", func(c config) any { return c.probeTimeout }, func(t *Tuning) { t.ProbeTimeout = time.Second }, time.Second},
}

func TestTuningZeroFieldsKeepTheDefaults(t *testing.T) {
	got, err := applyOptions(WithTuning(Tuning{}))
	if err != nil {
		t.Fatalf("WithTuning(Tuning{}): %v", err)
	}
	if want := defaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("WithTuning(Tuning{}) changed the config:\n got %+v\nwant %+v", got, want)
	}
	// The documented defaults, as the fields' comments state them.
	for field, pair := range map[string][2]any{
		"RefreshJitter":  {got.refreshJitter, 0.1},
		"ExpirySkew":     {got.skew, 30 * time.Second},
		"LockTTL":        {got.lockTTL, 10 * time.Second},
		"RefreshTimeout": {got.refreshTimeout, 30 * time.Second},
		"L1MaxAge":       {got.l1MaxAge, time.Duration(0)},
		"WaitRecheck":    {got.waitRecheck, time.Second},
		"NegativeTTL":    {got.negativeTTL, 10 * time.Second},
		"RetryAttempts":  {got.maxAttempts, 4},
		"RetryBase":      {got.backoffBase, 200 * time.Millisecond},
		"RetryMax":       {got.backoffMax, 5 * time.Second},
		"ProbeInterval":  {got.probeInterval, 5 * time.Second},
		"ProbeTimeout":   {got.probeTimeout, 2 * time.Second},
	} {
		if pair[0] != pair[1] {
			t.Errorf("default %s = %v, want %v", field, pair[0], pair[1])
		}
	}
}

func TestTuningFieldReachesConfig(t *testing.T) {
	if n := reflect.TypeFor[Tuning]().NumField(); n != len(tuningKnobs) {
		t.Fatalf("Tuning has %d fields, tuningKnobs %d: add the new field to the table", n, len(tuningKnobs))
	}
	for _, k := range tuningKnobs {
		t.Run(k.field, func(t *testing.T) {
			var tu Tuning
			k.set(&tu)
			got, err := applyOptions(WithTuning(tu))
			if err != nil {
				t.Fatalf("WithTuning(%+v): %v", tu, err)
			}
			if v := k.get(got); v != k.want {
				t.Errorf("%s = %v, want %v", k.field, v, k.want)
			}
			// Every other knob keeps its default.
			def := defaultConfig()
			for _, other := range tuningKnobs {
				if other.field != k.field && other.get(got) != other.get(def) {
					t.Errorf("setting %s changed %s to %v", k.field, other.field, other.get(got))
				}
			}
		})
	}
}

func TestTuningMinusOneTurnsOff(t *testing.T) {
	got, err := applyOptions(WithTuning(Tuning{RefreshJitter: -1, ExpirySkew: -1, NegativeTTL: -1}))
	if err != nil {
		t.Fatal(err)
	}
	if got.refreshJitter != 0 || got.skew != 0 || got.negativeTTL != 0 {
		t.Errorf("-1: jitter %v, skew %v, negative TTL %v; want all 0", got.refreshJitter, got.skew, got.negativeTTL)
	}
}

func TestTuningLaterOptionsChangeOnlyTheirFields(t *testing.T) {
	got, err := applyOptions(
		WithTuning(Tuning{LockTTL: time.Minute, RetryAttempts: 2}),
		WithTuning(Tuning{RetryAttempts: 7}),
	)
	if err != nil {
		t.Fatal(err)
	}
	if got.lockTTL != time.Minute || got.maxAttempts != 7 {
		t.Errorf("lock TTL %v, attempts %d; want 1m0s, 7", got.lockTTL, got.maxAttempts)
	}
}

func TestTuningInvalidFieldsAreErrors(t *testing.T) {
	for _, tc := range []struct {
		field string
		t     Tuning
	}{
		{"RefreshJitter", Tuning{RefreshJitter: 0.5}},
		{"RefreshJitter", Tuning{RefreshJitter: -0.1}},
		{"ExpirySkew", Tuning{ExpirySkew: -time.Second}},
		{"LockTTL", Tuning{LockTTL: time.Millisecond}},
		{"LockTTL", Tuning{LockTTL: -time.Second}},
		{"RefreshTimeout", Tuning{RefreshTimeout: -1}},
		{"L1MaxAge", Tuning{L1MaxAge: -time.Second}},
		{"WaitRecheck", Tuning{WaitRecheck: -time.Second}},
		{"NegativeTTL", Tuning{NegativeTTL: -time.Second}},
		{"RetryAttempts", Tuning{RetryAttempts: -1}},
		{"RetryBase", Tuning{RetryBase: -time.Second}},
		{"RetryMax", Tuning{RetryMax: -time.Second}},
		{"RetryMax", Tuning{RetryBase: time.Minute}}, // above the default max
		{"RetryMax", Tuning{RetryBase: time.Second, RetryMax: time.Millisecond}},
		{"ProbeInterval", Tuning{ProbeInterval: -time.Second}},
		{"ProbeTimeout", Tuning{ProbeTimeout: -time.Second}},
	} {
		c := defaultConfig()
		err := WithTuning(tc.t)(&c)
		var te *TuningError
		if !errors.As(err, &te) {
			t.Errorf("WithTuning(%+v) = %v, want a *TuningError", tc.t, err)
			continue
		}
		if te.Field != tc.field {
			t.Errorf("WithTuning(%+v) blames %s, want %s (%v)", tc.t, te.Field, tc.field, err)
		}
		if !reflect.DeepEqual(c, defaultConfig()) {
			t.Errorf("WithTuning(%+v) refused but changed the config", tc.t)
		}
	}
	// New returns the error.
	rdb, _ := miniBackend(t)
	if _, err := New(rdb, newFakeFetcher(time.Hour), WithTuning(Tuning{LockTTL: time.Millisecond})); err == nil {
		t.Error("New accepted a 1ms lock TTL")
	} else if want := "tokencache: Tuning.LockTTL 1ms is below 10ms"; err.Error() != want {
		t.Errorf("New: %q, want %q", err, want)
	}
}
