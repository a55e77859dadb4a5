package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// FormatDuration prints d with three significant digits in the unit that
// suits it: 87ns, 12.3µs, 201ms, 1.25s. Negative means "never".
func FormatDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "never"
	case d < time.Microsecond:
		return strconv.FormatInt(int64(d), 10) + "ns"
	case d < time.Millisecond:
		return trim3(float64(d)/1e3) + "µs"
	case d < time.Second:
		return trim3(float64(d)/1e6) + "ms"
	default:
		return trim3(float64(d)/1e9) + "s"
	}
}

func trim3(f float64) string {
	switch {
	case f >= 100:
		return strconv.FormatFloat(f, 'f', 0, 64)
	case f >= 10:
		return strconv.FormatFloat(f, 'f', 1, 64)
	default:
		return strconv.FormatFloat(f, 'f', 2, 64)
	}
}

// tableHeader and tableRow define the stdout table; the CSV carries the
// same columns unformatted, and more.
var tableHeader = []string{
	"mode", "N", "strategy",
	"cold calls", "calls/renewal (max)", "calls/lifetime",
	"p50", "p99", "max", "renewal p99", "renewal max", "cold all-ready",
	"cmds/replica/lifetime sent (executed)", "cmds/replica/renewal", "top commands sent",
	"hold p99 (last)",
	"client cpu", "redis cpu", "errors", "stale",
}

// perRenewal is the commands each replica sent per renewal round.
func perRenewal(r Result) string {
	if r.Renewals == 0 || r.N == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", float64(r.Commands.Total())/float64(r.N)/float64(r.Renewals))
}

// hold formats the refresh-to-holding delays.
func hold(r Result) string {
	if r.Hold == nil || r.Hold.Refreshes == 0 {
		return ""
	}
	s := FormatDuration(r.Hold.P99) + " (" + FormatDuration(r.Hold.Last) + ")"
	if r.Hold.Missed > 0 {
		s += fmt.Sprintf(", %d missed", r.Hold.Missed)
	}
	return s
}

func tableRow(r Result) []string {
	return []string{
		r.Mode, strconv.Itoa(r.N), r.Strategy,
		strconv.Itoa(r.ColdCalls),
		fmt.Sprintf("%.2f (%d)", r.CallsPerRenewal, r.MaxCallsPerRenewal),
		fmt.Sprintf("%.2f", r.CallsPerLifetime),
		FormatDuration(r.Steady.P50), FormatDuration(r.Steady.P99), FormatDuration(r.Steady.Max),
		FormatDuration(r.Renewal.P99), FormatDuration(r.Renewal.Max),
		FormatDuration(r.ColdAllReady),
		fmt.Sprintf("%.2f (%.1f)", r.CmdsPerLifetime, r.ExecutedPerLifetime), perRenewal(r), r.TopCommands,
		hold(r),
		fmt.Sprintf("%.0f%%", r.ClientCPU), fmt.Sprintf("%.0f%%", r.RedisCPU),
		strconv.Itoa(r.Errors), strconv.Itoa(r.Stale),
	}
}

// WriteTable writes results as an aligned text table.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(tableHeader, "\t"))
	for _, r := range results {
		fmt.Fprintln(tw, strings.Join(tableRow(r), "\t"))
	}
	return tw.Flush()
}

// WriteMarkdown writes results as a Markdown table.
func WriteMarkdown(w io.Writer, results []Result) error {
	line := func(cells []string) string {
		for i, c := range cells {
			cells[i] = strings.ReplaceAll(c, "|", `\|`)
		}
		return "| " + strings.Join(cells, " | ") + " |\n"
	}
	var b strings.Builder
	b.WriteString(line(append([]string(nil), tableHeader...)))
	b.WriteString("|" + strings.Repeat("---|", len(tableHeader)) + "\n")
	for _, r := range results {
		b.WriteString(line(tableRow(r)))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

var csvHeader = []string{
	"mode", "strategy", "n", "lifetime_ms", "issuer_latency_ms", "steady_duration_ms", "caller_interval_ms",
	"issuer_calls", "cold_calls", "renewals", "calls_per_renewal", "max_calls_per_renewal", "calls_per_lifetime",
	"cold_all_ready_us", "cold_p50_us", "cold_p99_us", "cold_max_us",
	"steady_calls", "steady_p50_us", "steady_p99_us", "steady_max_us",
	"renewal_calls", "renewal_p50_us", "renewal_p99_us", "renewal_max_us",
	"cold_cmds_per_replica", "cmds_per_replica_per_lifetime", "executed_per_replica_per_lifetime", "top_commands",
	"client_cpu_pct", "redis_cpu_pct", "calls", "errors", "stale",
	"cmds_per_replica_per_renewal", "hold_refreshes", "hold_p50_us", "hold_p99_us", "hold_last_us", "hold_missed",
}

// WriteCSV writes results as CSV with a header row; durations in
// microseconds (lifetime, latency and intervals in milliseconds).
func WriteCSV(w io.Writer, results []Result) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	us := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e3, 'f', 1, 64) }
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for _, r := range results {
		row := []string{
			r.Mode, r.Strategy, strconv.Itoa(r.N), ms(r.Lifetime), ms(r.Latency), ms(r.Duration), ms(r.Interval),
			strconv.Itoa(r.IssuerCalls), strconv.Itoa(r.ColdCalls), strconv.Itoa(r.Renewals), f(r.CallsPerRenewal),
			strconv.Itoa(r.MaxCallsPerRenewal), f(r.CallsPerLifetime),
			us(r.ColdAllReady), us(r.Cold.P50), us(r.Cold.P99), us(r.Cold.Max),
			strconv.Itoa(r.Steady.Count), us(r.Steady.P50), us(r.Steady.P99), us(r.Steady.Max),
			strconv.Itoa(r.Renewal.Count), us(r.Renewal.P50), us(r.Renewal.P99), us(r.Renewal.Max),
			f(r.ColdCmdsPerReplica), f(r.CmdsPerLifetime), f(r.ExecutedPerLifetime), r.TopCommands,
			f(r.ClientCPU), f(r.RedisCPU), strconv.Itoa(r.Calls), strconv.Itoa(r.Errors), strconv.Itoa(r.Stale),
			perRenewal(r),
		}
		if h := r.Hold; h != nil {
			row = append(row, strconv.Itoa(h.Refreshes), us(h.P50), us(h.P99), us(h.Last), strconv.Itoa(h.Missed))
		} else {
			row = append(row, "", "", "", "", "")
		}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// Report is the JSON document of a run.
type Report struct {
	Started time.Time `json:"started"`
	Machine Machine   `json:"machine"`
	Command string    `json:"command"`
	Results []Result  `json:"results"`
	Idle    []Result  `json:"idle,omitempty"`
}

// WriteJSON writes rep as indented JSON.
func WriteJSON(w io.Writer, rep Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
