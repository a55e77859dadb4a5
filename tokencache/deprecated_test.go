package tokencache

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// The deprecated options are wrappers of WithTuning: each sets the config
// WithTuning sets, and refuses what it refused before Tuning.
func TestDeprecatedOptionsMatchTuning(t *testing.T) {
	for _, tc := range []struct {
		name       string
		deprecated Option
		tuning     Tuning
	}{
		{"WithRefreshJitter", WithRefreshJitter(0.3), Tuning{RefreshJitter: 0.3}},
		{"WithRefreshJitter(0)", WithRefreshJitter(0), Tuning{RefreshJitter: -1}},
		{"WithExpirySkew", WithExpirySkew(time.Minute), Tuning{ExpirySkew: time.Minute}},
		{"WithExpirySkew(0)", WithExpirySkew(0), Tuning{ExpirySkew: -1}},
		{"WithLockTTL", WithLockTTL(time.Minute), Tuning{LockTTL: time.Minute}},
		{"WithRefreshTimeout", WithRefreshTimeout(time.Minute), Tuning{RefreshTimeout: time.Minute}},
		{"WithL1MaxAge", WithL1MaxAge(time.Minute), Tuning{L1MaxAge: time.Minute}},
		{"WithL1MaxAge(0)", WithL1MaxAge(0), Tuning{}},
		{"WithWaitRecheck", WithWaitRecheck(time.Minute), Tuning{WaitRecheck: time.Minute}},
		{"WithNegativeTTL", WithNegativeTTL(time.Minute), Tuning{NegativeTTL: time.Minute}},
		{"WithNegativeTTL(0)", WithNegativeTTL(0), Tuning{NegativeTTL: -1}},
		{"WithRetry", WithRetry(2, time.Second, time.Minute), Tuning{RetryAttempts: 2, RetryBase: time.Second, RetryMax: time.Minute}},
		{"WithSubscriptionProbe", WithSubscriptionProbe(time.Hour, time.Second), Tuning{ProbeInterval: time.Hour, ProbeTimeout: time.Second}},
	} {
		got, err := applyOptions(tc.deprecated)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		want, err := applyOptions(WithTuning(tc.tuning))
		if err != nil {
			t.Errorf("%s: WithTuning(%+v): %v", tc.name, tc.tuning, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, want)
		}
	}
	for name, o := range map[string]Option{
		"WithRefreshJitter(-1)":          WithRefreshJitter(-1),
		"WithRefreshJitter(0.5)":         WithRefreshJitter(0.5),
		"WithExpirySkew(-1)":             WithExpirySkew(-1),
		"WithLockTTL(0)":                 WithLockTTL(0),
		"WithLockTTL(1ms)":               WithLockTTL(time.Millisecond),
		"WithRefreshTimeout(0)":          WithRefreshTimeout(0),
		"WithL1MaxAge(-1)":               WithL1MaxAge(-1),
		"WithWaitRecheck(0)":             WithWaitRecheck(0),
		"WithNegativeTTL(-1)":            WithNegativeTTL(-1),
		"WithRetry(0, 1s, 1s)":           WithRetry(0, time.Second, time.Second),
		"WithRetry(1, 0, 1s)":            WithRetry(1, 0, time.Second),
		"WithRetry(1, 1s, 0)":            WithRetry(1, time.Second, 0),
		"WithRetry(1, 2s, 1s)":           WithRetry(1, 2*time.Second, time.Second),
		"WithSubscriptionProbe(0, 1s)":   WithSubscriptionProbe(0, time.Second),
		"WithSubscriptionProbe(1s, 0)":   WithSubscriptionProbe(time.Second, 0),
		"WithSubscriptionProbe(-1s, 1s)": WithSubscriptionProbe(-time.Second, time.Second),
	} {
		var te *TuningError
		if _, err := applyOptions(o); !errors.As(err, &te) {
			t.Errorf("%s = %v, want a *TuningError", name, err)
		}
	}
}
