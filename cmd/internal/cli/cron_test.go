package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cronSchedule is one place that says how often the refresher runs and
// with which --min-ttl.
type cronSchedule struct {
	where    string
	interval time.Duration
	minTTL   time.Duration
}

// everyN reads a "*/N * * * *" schedule as N minutes.
func everyN(t *testing.T, where, sched string) time.Duration {
	t.Helper()
	f := strings.Fields(sched)
	if len(f) < 5 || !strings.HasPrefix(f[0], "*/") || f[1] != "*" {
		t.Fatalf("%s: schedule %q: want */N * * * *", where, sched)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(f[0], "*/"))
	if err != nil || n <= 0 || 60%n != 0 {
		t.Fatalf("%s: schedule %q: N must divide 60", where, sched)
	}
	return time.Duration(n) * time.Minute
}

func mustDuration(t *testing.T, where, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	return d
}

func readRepo(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// cronSchedules collects the schedule and threshold of docs/cron.md's cron
// line, examples/cron, the Kubernetes CronJob and refresh's default.
func cronSchedules(t *testing.T) []cronSchedule {
	t.Helper()
	var out []cronSchedule

	cronDoc := readRepo(t, "docs/cron.md")
	m := regexp.MustCompile("(?m)^```cron\n(\\S+ \\S+ \\S+ \\S+ \\S+)\\s[^\n]*--min-ttl (\\S+)").FindStringSubmatch(cronDoc)
	if m == nil {
		t.Fatal("docs/cron.md: no ```cron block running refresh --min-ttl")
	}
	out = append(out, cronSchedule{"docs/cron.md cron line", everyN(t, "docs/cron.md", m[1]), mustDuration(t, "docs/cron.md", m[2])})

	ex := readRepo(t, "examples/cron/main.go")
	sm := regexp.MustCompile(`(?m)^//\s+(\*/\d+ \* \* \* \*) `).FindStringSubmatch(ex)
	dm := regexp.MustCompile(`getenv\("MIN_TTL", "([^"]+)"\)`).FindStringSubmatch(ex)
	if sm == nil || dm == nil {
		t.Fatal("examples/cron/main.go: no crontab line in its doc comment or no MIN_TTL default")
	}
	out = append(out, cronSchedule{"examples/cron", everyN(t, "examples/cron", sm[1]), mustDuration(t, "examples/cron", dm[1])})

	cj := readCronJob(t)
	args := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Args
	k8sTTL := DefaultMinTTL
	for i, a := range args {
		if a == "--min-ttl" && i+1 < len(args) {
			k8sTTL = mustDuration(t, "k8s", args[i+1])
		}
	}
	out = append(out, cronSchedule{"examples/k8s-cronjob.yaml", everyN(t, "k8s", cj.Spec.Schedule), k8sTTL})
	return out
}

// TestCronArithmetic checks that every cron set-up the repository shows
// uses the same schedule and threshold as refresh's default, and that they
// keep docs/cron.md's promise for Basiq's 60-minute token: every run after
// a refresh refreshes again (2-3 refreshes an hour), and one failed run
// does not let the token lapse before the next.
func TestCronArithmetic(t *testing.T) {
	const life = 60 * time.Minute
	skew := 30 * time.Second // Tuning.ExpirySkew's default
	scheds := cronSchedules(t)
	first := scheds[0]
	for _, s := range scheds {
		if s.interval != first.interval || s.minTTL != first.minTTL {
			t.Errorf("%s: every %v with --min-ttl %v, but %s says every %v with %v", s.where, s.interval, s.minTTL, first.where, first.interval, first.minTTL)
		}
		if s.minTTL != DefaultMinTTL {
			t.Errorf("%s: --min-ttl %v, but refresh's default is %v", s.where, s.minTTL, DefaultMinTTL)
		}
	}
	ttl := life - skew // the key's TTL right after a refresh
	i, m := first.interval, first.minTTL
	if perHour := time.Hour / i; perHour < 2 || perHour > 3 {
		t.Errorf("every %v: %d runs an hour, Basiq advises 2-3 refreshes", i, perHour)
	}
	if left := ttl - i; left >= m {
		t.Errorf("a run %v after a refresh finds %v left, not below --min-ttl %v: it would not refresh", i, left, m)
	}
	if left := ttl - 2*i; left <= 0 {
		t.Errorf("after one failed run the next finds %v left: the token lapses", left)
	}
	// The numbers docs/cron.md states.
	cronDoc := readRepo(t, "docs/cron.md")
	for _, d := range []time.Duration{ttl - i, ttl - 2*i, ttl} {
		want := strconv.FormatFloat(d.Minutes(), 'f', -1, 64) + " minutes"
		if !strings.Contains(cronDoc, want) {
			t.Errorf("docs/cron.md does not state %q", want)
		}
	}
}
