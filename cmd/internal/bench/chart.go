package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// panel is one chart of the SVG: a value per strategy per N.
type panel struct {
	title string
	unit  string
	value func(Result) float64
	label func(float64) string
}

// chartColors gives each strategy a color, in Strategies order.
var chartColors = []string{"#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#17becf", "#7f7f7f"}

// WriteSVG draws grouped bar charts (log scale) of the goroutine-mode
// results: issuer calls per renewal, renewal p99 time-to-token and Redis
// commands per replica per lifetime, by N and strategy.
func WriteSVG(w io.Writer, results []Result, subtitle string) error {
	var rs []Result
	for _, r := range results {
		if r.Mode == ModeGoroutines {
			rs = append(rs, r)
		}
	}
	var ns []int
	var names []string
	for _, r := range rs {
		if !slices.Contains(ns, r.N) {
			ns = append(ns, r.N)
		}
		if !slices.Contains(names, r.Strategy) {
			names = append(names, r.Strategy)
		}
	}
	slices.Sort(ns)
	slices.SortStableFunc(names, func(a, b string) int { return order(a) - order(b) })
	ms := func(v float64) string { return FormatDuration(time.Duration(v * 1e6)) }
	num := func(v float64) string {
		if v >= 10 {
			return strconv.FormatFloat(v, 'f', 0, 64)
		}
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	panels := []panel{
		{"Issuer calls per renewal (fleet-wide)", "calls", func(r Result) float64 { return r.CallsPerRenewal }, num},
		{"p99 time-to-token during renewals", "ms", func(r Result) float64 { return float64(r.Renewal.P99) / 1e6 }, ms},
		{"Redis commands per replica per token lifetime", "commands", func(r Result) float64 { return r.CmdsPerLifetime }, num},
	}
	const (
		pw, ph       = 900, 260 // one panel
		left, top    = 70, 80
		plotW, plotH = 800, 180
	)
	height := top + len(panels)*(ph+20) - 40
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", pw, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="16" font-weight="bold">tokencache vs. what people use today</text>`+"\n", left)
	fmt.Fprintf(&b, `<text x="%d" y="40" fill="#555">%s</text>`+"\n", left, xmlEscape(subtitle))
	// Legend.
	for i, name := range names {
		x := left + i*140
		y := 50
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			x, y, color(name), x+14, y+9, xmlEscape(name))
	}
	for pi, p := range panels {
		oy := top + pi*(ph+20)
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, r := range rs {
			if v := p.value(r); v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		if math.IsInf(lo, 1) {
			lo, hi = 1, 10
		}
		dlo, dhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		if math.Log10(lo)-dlo < 0.3 {
			dlo-- // keep the smallest bar visible
		}
		if dhi <= dlo {
			dhi = dlo + 1
		}
		y := func(v float64) float64 {
			if v <= 0 {
				return float64(oy + 20 + plotH)
			}
			f := (math.Log10(v) - dlo) / (dhi - dlo)
			return float64(oy+20+plotH) - f*plotH
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="14" font-weight="bold">%s (log scale)</text>`+"\n", left, oy+12, xmlEscape(p.title))
		for d := dlo; d <= dhi; d++ {
			v := math.Pow(10, d)
			yy := y(v)
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, left+plotW, yy, yy)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, yy+4, xmlEscape(p.label(v)))
		}
		groupW := float64(plotW) / float64(max(len(ns), 1))
		barW := (groupW - 30) / float64(max(len(names), 1))
		for gi, n := range ns {
			gx := float64(left) + float64(gi)*groupW + 15
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">N = %d</text>`+"\n", gx+(groupW-30)/2, oy+20+plotH+16, n)
			for si, name := range names {
				i := slices.IndexFunc(rs, func(r Result) bool { return r.N == n && r.Strategy == name })
				if i < 0 {
					continue
				}
				v := p.value(rs[i])
				x := gx + float64(si)*barW
				yy := y(v)
				if v > 0 && v < math.Pow(10, dlo) {
					yy = float64(oy + 20 + plotH)
				}
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s N=%d: %s</title></rect>`+"\n",
					x+1, yy, barW-2, float64(oy+20+plotH)-yy, color(name), xmlEscape(name), n, xmlEscape(p.label(v)))
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%s</text>`+"\n",
					x+barW/2, yy-3, xmlEscape(p.label(v)))
			}
		}
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>`+"\n", left, left+plotW, oy+20+plotH, oy+20+plotH)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func order(name string) int {
	if i := slices.Index(strategies, name); i >= 0 {
		return i
	}
	return len(strategies)
}

func color(name string) string { return chartColors[min(order(name), len(chartColors)-1)] }

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
