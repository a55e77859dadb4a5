package cli

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokencache/tokencache/cmd/internal/localapi"
	"github.com/tokencache/tokencache/tokencache"
)

// The reference pages are checked against the code: every command of the
// command table, every flag its -h prints, every environment variable its
// sources read and every metric its registry holds must have a row.
// Each check is a function of the page's text, so that
// TestDocumentedChecksCatchAMissingRow can run it on a copy with one row
// removed.

// visibleCommands returns the command table's names, hidden ones left out.
func visibleCommands() []string { return visibleNames() }

// helpFlags runs "tokencache [cmd] -h" and returns the flags it lists.
func helpFlags(t *testing.T, cmd ...string) []string {
	t.Helper()
	var out bytes.Buffer
	if err := Run(context.Background(), append(cmd, "-h"), Env{Stdout: &out, Getenv: func(string) string { return "" }}); ExitCode(err) != ExitOK {
		t.Fatalf("tokencache %v -h: %v", cmd, err)
	}
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  --(\S+)`).FindAllStringSubmatch(out.String(), -1) {
		flags = append(flags, m[1])
	}
	if len(cmd) == 0 {
		flags = append(flags, "version") // the global --version, listed apart in the usage
	}
	return flags
}

// commandFlags returns each visible command's own flags, from its -h.
func commandFlags(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, c := range visibleCommands() {
		out[c] = helpFlags(t, c)
	}
	return out
}

// missingCommandRows returns the commands that have no table row in doc:
// a line starting with "| `name" followed by a space or a backtick.
func missingCommandRows(doc string, names []string) []string {
	var missing []string
	for _, n := range names {
		if !regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(n) + "[ `]").MatchString(doc) {
			missing = append(missing, n)
		}
	}
	return missing
}

// tableRows returns the lines of doc's tables.
func tableRows(doc string) []string {
	var rows []string
	for _, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(l, "|") {
			rows = append(rows, l)
		}
	}
	return rows
}

// missingFlagRows returns the flags with no row in doc: a global flag
// needs a row starting with "| `--flag`"; a command's flag a row naming
// both "`command`" and "`--flag`".
func missingFlagRows(doc string, global []string, byCommand map[string][]string) []string {
	rows := tableRows(doc)
	has := func(ok func(string) bool) bool { return slices.ContainsFunc(rows, ok) }
	var missing []string
	for _, f := range global {
		if !has(func(r string) bool { return strings.HasPrefix(r, "| `--"+f+"`") }) {
			missing = append(missing, "--"+f)
		}
	}
	for c, flags := range byCommand {
		for _, f := range flags {
			if globalFlag(f) {
				continue
			}
			if !has(func(r string) bool { return strings.Contains(r, "`"+c+"`") && strings.Contains(r, "`--"+f+"`") }) {
				missing = append(missing, c+" --"+f)
			}
		}
	}
	sort.Strings(missing)
	return missing
}

// commandEnvVars returns every environment variable the command's sources
// name (TOKENCACHE_*, BASIQ_*), from the non-test Go files of the command,
// this package and the local API.
func commandEnvVars(t *testing.T) []string {
	t.Helper()
	re := regexp.MustCompile(`"((?:TOKENCACHE|BASIQ)_[A-Z0-9_]+)"`)
	seen := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(nonTestSources(t, ".", "../localapi", "../../tokencache"), -1) {
		seen[m[1]] = true
	}
	var out []string
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// missingEnvRows returns the variables that no table row of doc names.
func missingEnvRows(doc string, vars []string) []string {
	rows := strings.Join(tableRows(doc), "\n")
	var missing []string
	for _, v := range vars {
		if !strings.Contains(rows, "`"+v+"`") {
			missing = append(missing, v)
		}
	}
	return missing
}

// describingRegisterer registers on a registry and records the names of
// the metrics each collector describes, exported or not yet.
type describingRegisterer struct {
	prometheus.Registerer
	names map[string]bool
}

var descName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d *describingRegisterer) describe(c prometheus.Collector) {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := descName.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
}

func (d *describingRegisterer) Register(c prometheus.Collector) error {
	d.describe(c)
	return d.Registerer.Register(c)
}

func (d *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

// exportedMetrics builds the registry that daemon, serve and proxy serve
// on /metrics (the daemon's token gauges and the local API's counters
// included) and returns every tokencache_ metric name it holds: those it
// gathers, and those its collectors describe (a counter vector with no
// child yet is gathered as nothing).
func exportedMetrics(t *testing.T) []string {
	t.Helper()
	m := newMetrics("ns", func() tokencache.Stats { return tokencache.Stats{} })
	m.trackToken()
	d := &describingRegisterer{Registerer: m.reg, names: map[string]bool{}}
	localapi.NewMetrics(d, "ns")
	d.describe(m.fetcher)
	d.describe(m.tokenCalls)
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		d.names[mf.GetName()] = true
	}
	var out []string
	for n := range d.names {
		if strings.HasPrefix(n, "tokencache_") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// missingMetricRows returns the metrics that no table row of doc names as
// "`name`" or "`name{labels}`".
func missingMetricRows(doc string, names []string) []string {
	rows := strings.Join(tableRows(doc), "\n")
	var missing []string
	for _, n := range names {
		if !strings.Contains(rows, "`"+n+"`") && !strings.Contains(rows, "`"+n+"{") {
			missing = append(missing, n)
		}
	}
	return missing
}

// TestEveryCommandIsDocumented checks that each command of the command
// table has a row in the README's command list and in docs/cli.md.
func TestEveryCommandIsDocumented(t *testing.T) {
	names := visibleCommands()
	if len(names) < 10 {
		t.Fatalf("only %d commands: %v", len(names), names)
	}
	for _, page := range []string{"README.md", "docs/cli.md"} {
		if missing := missingCommandRows(readRepo(t, page), names); len(missing) > 0 {
			t.Errorf("%s has no row for the commands %v", page, missing)
		}
	}
}

// TestEveryFlagIsDocumented checks that every global flag and every flag
// of every command, as their -h lists them, has a row in
// docs/configuration.md.
func TestEveryFlagIsDocumented(t *testing.T) {
	global, byCmd := helpFlags(t), commandFlags(t)
	if len(global) < 14 || len(byCmd["serve"]) < 9 || len(byCmd["proxy"]) < 10 {
		t.Fatalf("too few flags read: global %v, serve %v, proxy %v", global, byCmd["serve"], byCmd["proxy"])
	}
	if missing := missingFlagRows(readRepo(t, "docs/configuration.md"), global, byCmd); len(missing) > 0 {
		t.Errorf("docs/configuration.md has no row for %v", missing)
	}
}

// TestEnvVarsDocumented checks that every environment variable the
// command reads has a row in docs/configuration.md.
func TestEnvVarsDocumented(t *testing.T) {
	vars := commandEnvVars(t)
	for _, must := range []string{EnvListenSecret, EnvRedisURL, EnvBasiqAPIKey, EnvLogFormat} {
		if !slices.Contains(vars, must) {
			t.Fatalf("the source scan misses %s: it reads too little (%v)", must, vars)
		}
	}
	if missing := missingEnvRows(readRepo(t, "docs/configuration.md"), vars); len(missing) > 0 {
		t.Errorf("docs/configuration.md has no row for %v", missing)
	}
}

// TestEveryMetricIsDocumented checks that every metric the command's
// registry exports has a row in docs/metrics.md.
func TestEveryMetricIsDocumented(t *testing.T) {
	names := exportedMetrics(t)
	for _, must := range []string{"tokencache_cache_issuer_calls_total", "tokencache_issuer_requests_total",
		"tokencache_token_ttl_seconds", "tokencache_proxy_requests_total", "tokencache_local_tokens_served_total"} {
		if !slices.Contains(names, must) {
			t.Fatalf("the registry misses %s: the test reads too little (%v)", must, names)
		}
	}
	if missing := missingMetricRows(readRepo(t, "docs/metrics.md"), names); len(missing) > 0 {
		t.Errorf("docs/metrics.md has no row for %v", missing)
	}
}

// TestDocumentedChecksCatchAMissingRow removes one row from a copy of
// each page and expects its check to name what the row documented.
func TestDocumentedChecksCatchAMissingRow(t *testing.T) {
	global, byCmd := helpFlags(t), commandFlags(t)
	drop := func(t *testing.T, page, rowPrefix string) string {
		t.Helper()
		doc := readRepo(t, page)
		var kept []string
		dropped := 0
		for _, l := range strings.Split(doc, "\n") {
			if strings.HasPrefix(l, rowPrefix) {
				dropped++
				continue
			}
			kept = append(kept, l)
		}
		if dropped != 1 {
			t.Fatalf("%s: %d rows start with %q, want 1", page, dropped, rowPrefix)
		}
		return strings.Join(kept, "\n")
	}
	tests := []struct {
		name, page, row, want string
		check                 func(doc string) []string
	}{
		{"README command", "README.md", "| `proxy` |", "proxy", func(doc string) []string { return missingCommandRows(doc, visibleCommands()) }},
		{"cli.md command", "docs/cli.md", "| `serve ", "serve", func(doc string) []string { return missingCommandRows(doc, visibleCommands()) }},
		{"global flag", "docs/configuration.md", "| `--redis-key-file` |", "--redis-key-file", func(doc string) []string { return missingFlagRows(doc, global, byCmd) }},
		{"command flag", "docs/configuration.md", "| `proxy` | `--upstream` |", "proxy --upstream", func(doc string) []string { return missingFlagRows(doc, global, byCmd) }},
		{"environment variable", "docs/configuration.md", "| `TOKENCACHE_LISTEN_SECRET` |", "TOKENCACHE_LISTEN_SECRET", func(doc string) []string { return missingEnvRows(doc, commandEnvVars(t)) }},
		{"metric", "docs/metrics.md", "| `tokencache_resubscribes_total` |", "tokencache_resubscribes_total", func(doc string) []string { return missingMetricRows(doc, exportedMetrics(t)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.check(readRepo(t, tt.page)); len(got) != 0 {
				t.Fatalf("%s as committed: missing %v", tt.page, got)
			}
			if got := tt.check(drop(t, tt.page, tt.row)); !slices.Contains(got, tt.want) {
				t.Errorf("%s without the row %q: check reports %v, want %q among them", tt.page, tt.row, got, tt.want)
			}
		})
	}
}
