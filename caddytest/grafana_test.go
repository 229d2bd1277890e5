package integration

// The Grafana dashboard of examples/grafana against what a node exports:
// every metric a panel or a template variable queries must be one a live
// node serves on its admin endpoint's /metrics, with every label the query
// filters, groups or names a legend on.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// grafanaDashboard is the dashboard the tests check, relative to this
// package's directory (the tests' working directory).
var grafanaDashboard = filepath.Join("..", "examples", "grafana", "shardcache.json")

// scrapeLabels are the labels Prometheus adds to every series when it
// scrapes a target: a dashboard may filter and group on them although no
// node exports them.
var scrapeLabels = map[string]bool{"instance": true, "job": true}

// grafanaBuiltinVars are Grafana's own variables, usable in queries without
// a templating entry.
var grafanaBuiltinVars = map[string]bool{
	"__rate_interval": true, "__interval": true, "__interval_ms": true, "__range": true,
	"__range_s": true, "__range_ms": true, "__dashboard": true, "__from": true, "__to": true,
}

// promFuncs are the PromQL functions and aggregations the dashboard may
// call (and Grafana's label_values, in template variable queries).
var promFuncs = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "stddev": true, "stdvar": true,
	"topk": true, "bottomk": true, "quantile": true, "count_values": true, "group": true,
	"rate": true, "irate": true, "increase": true, "delta": true, "idelta": true, "deriv": true,
	"histogram_quantile": true, "clamp": true, "clamp_min": true, "clamp_max": true, "abs": true,
	"avg_over_time": true, "max_over_time": true, "min_over_time": true, "sum_over_time": true,
	"last_over_time": true, "changes": true, "resets": true, "time": true, "vector": true,
	"scalar": true, "label_replace": true, "absent": true, "round": true,
}

// promKeywords are PromQL words that are neither metrics nor functions.
var promKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
}

// grafanaQuery is one query of the dashboard: a panel target's expr or a
// template variable's query.
type grafanaQuery struct {
	where  string // "panel \"Title\" target A", "variable group"
	expr   string
	legend string
}

// grafanaDash is the part of the dashboard JSON the tests read.
type grafanaDash struct {
	SchemaVersion int            `json:"schemaVersion"`
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *grafanaDSRef   `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type grafanaDSRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaPanel struct {
	ID         int                       `json:"id"`
	Type       string                    `json:"type"`
	Title      string                    `json:"title"`
	Datasource *grafanaDSRef             `json:"datasource"`
	GridPos    *struct{ H, W, X, Y int } `json:"gridPos"`
	Panels     []grafanaPanel            `json:"panels"` // a collapsed row's
	Targets    []struct {
		RefID        string        `json:"refId"`
		Expr         string        `json:"expr"`
		LegendFormat string        `json:"legendFormat"`
		Datasource   *grafanaDSRef `json:"datasource"`
	} `json:"targets"`
}

// loadGrafanaDashboard parses the dashboard and checks its frame: the
// datasource variable DS_PROMETHEUS every panel and target uses, the
// instance and group variables, unique panel ids; it returns every query.
func loadGrafanaDashboard(t *testing.T) []grafanaQuery {
	t.Helper()
	raw, err := os.ReadFile(grafanaDashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDash
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", grafanaDashboard, err)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d; want a current dashboard (36 or later)", d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: want both", d.UID, d.Title)
	}
	const ds = "${DS_PROMETHEUS}"
	vars := map[string]bool{}
	var queries []grafanaQuery
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				t.Errorf("variable %s: query %s; want \"prometheus\"", v.Name, v.Query)
			}
		case "query":
			if v.Datasource == nil || v.Datasource.UID != ds {
				t.Errorf("variable %s: datasource %+v; want uid %s", v.Name, v.Datasource, ds)
			}
			// The query is a string or, since Grafana 10, {"query": "..."}.
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil {
				var obj struct{ Query string }
				if err := json.Unmarshal(v.Query, &obj); err != nil {
					t.Errorf("variable %s: query %s: %v", v.Name, v.Query, err)
				}
				q = obj.Query
			}
			queries = append(queries, grafanaQuery{where: "variable " + v.Name, expr: q})
		}
	}
	for _, name := range []string{"DS_PROMETHEUS", "instance", "group"} {
		if !vars[name] {
			t.Errorf("no template variable %s", name)
		}
	}
	ids := map[int]string{}
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panel %q: id %d already used by %q", p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
				t.Errorf("panel %q: no gridPos", p.Title)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != ds {
				t.Errorf("panel %q: datasource %+v; want uid %s", p.Title, p.Datasource, ds)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q: no targets", p.Title)
			}
			for _, tg := range p.Targets {
				where := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
				if tg.Datasource != nil && tg.Datasource.UID != ds {
					t.Errorf("%s: datasource %+v; want uid %s", where, tg.Datasource, ds)
				}
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: no expr", where)
					continue
				}
				queries = append(queries, grafanaQuery{where: where, expr: tg.Expr, legend: tg.LegendFormat})
			}
		}
	}
	walk(d.Panels)
	// Every $variable of a query is a template variable or Grafana's own.
	varRef := regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)
	for _, q := range queries {
		for _, m := range varRef.FindAllStringSubmatch(q.expr, -1) {
			if !vars[m[1]] && !grafanaBuiltinVars[m[1]] {
				t.Errorf("%s: $%s is no template variable: %s", q.where, m[1], q.expr)
			}
		}
	}
	return queries
}

// promToken is one token of a PromQL expression.
type promToken struct {
	kind byte // 'i' identifier, 's' string, 'n' number, 'v' $variable, 'r' [range], 'o' operator, or the punctuation itself: ( ) { } ,
	text string
}

// tokenizePromQL splits a PromQL expression (with Grafana $variables) into
// tokens. Ranges and subqueries ([5m], [$__rate_interval], [1h:5m]) are one
// token each; strings keep their quotes off.
func tokenizePromQL(expr string) ([]promToken, error) {
	var out []promToken
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#': // a comment, to the end of the line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			var s strings.Builder
			j := i + 1
			for ; j < len(expr) && expr[j] != c; j++ {
				if expr[j] == '\\' && c != '`' && j+1 < len(expr) {
					j++
				}
				s.WriteByte(expr[j])
			}
			if j >= len(expr) {
				return nil, fmt.Errorf("unterminated string at %d", i)
			}
			out = append(out, promToken{'s', s.String()})
			i = j + 1
		case c == '[':
			j := strings.IndexByte(expr[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("unterminated range at %d", i)
			}
			out = append(out, promToken{'r', expr[i : i+j+1]})
			i += j + 1
		case c == '$':
			j := i + 1
			if j < len(expr) && expr[j] == '{' {
				k := strings.IndexByte(expr[j:], '}')
				if k < 0 {
					return nil, fmt.Errorf("unterminated ${ at %d", i)
				}
				j += k + 1
			} else {
				for j < len(expr) && isIdent(expr[j]) {
					j++
				}
			}
			if j == i+1 {
				return nil, fmt.Errorf("lone $ at %d", i)
			}
			out = append(out, promToken{'v', expr[i:j]})
			i = j
		case isIdentStart(c):
			j := i
			for j < len(expr) && isIdent(expr[j]) {
				j++
			}
			out = append(out, promToken{'i', expr[i:j]})
			i = j
		case c >= '0' && c <= '9' || c == '.':
			j := i
			for j < len(expr) && (expr[j] >= '0' && expr[j] <= '9' || expr[j] == '.' || expr[j] == 'e' || expr[j] == 'E' ||
				(expr[j] == '+' || expr[j] == '-') && (expr[j-1] == 'e' || expr[j-1] == 'E')) {
				j++
			}
			out = append(out, promToken{'n', expr[i:j]})
			i = j
		case strings.ContainsRune("(){},", rune(c)):
			out = append(out, promToken{c, string(c)})
			i++
		default:
			op := ""
			for _, o := range []string{"=~", "!~", "!=", "==", ">=", "<=", "=", "+", "-", "*", "/", "%", "^", ">", "<"} {
				if strings.HasPrefix(expr[i:], o) {
					op = o
					break
				}
			}
			if op == "" {
				return nil, fmt.Errorf("unexpected %q at %d", c, i)
			}
			out = append(out, promToken{'o', op})
			i += len(op)
		}
	}
	return out, nil
}

// promSelector is one metric a query names, with its label matchers.
type promSelector struct {
	metric   string
	matchers []promMatcher
}

type promMatcher struct{ label, op, value string }

// promGrouping is a by/without/on/ignoring/group_left/group_right clause,
// or label_values' label: the labels it names and the metrics (selector
// indexes) they must exist on.
type promGrouping struct {
	clause  string
	labels  []string
	metrics []int
}

// parsePromQL extracts the selectors and the grouping clauses of a
// PromQL expression. It is no full parser: it checks that brackets
// balance, that every identifier followed by ( is a known function, and
// finds the operand of each aggregation's by/without clause (the
// parenthesized expression after the clause, or before it).
func parsePromQL(expr string) ([]promSelector, []promGrouping, error) {
	toks, err := tokenizePromQL(expr)
	if err != nil {
		return nil, nil, err
	}
	// match[i] is the index of the bracket matching the ( or { at i, and
	// the other way round.
	match := map[int]int{}
	var stack []int
	for i, tk := range toks {
		switch tk.kind {
		case '(', '{':
			stack = append(stack, i)
		case ')', '}':
			if len(stack) == 0 {
				return nil, nil, fmt.Errorf("unbalanced %s", tk.text)
			}
			o := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if (toks[o].kind == '(') != (tk.kind == ')') {
				return nil, nil, fmt.Errorf("%s closed by %s", toks[o].text, tk.text)
			}
			match[o], match[i] = i, o
		}
	}
	if len(stack) > 0 {
		return nil, nil, fmt.Errorf("unclosed %s", toks[stack[len(stack)-1]].text)
	}
	var sels []promSelector
	selAt := map[int]int{} // token index of a metric name -> selector index
	type pending struct {
		clause   string
		labels   []string
		from, to int // the token range whose selectors the labels must exist on
	}
	var groups []pending
	labelList := func(open int) ([]string, error) {
		var ls []string
		for j := open + 1; j < match[open]; j++ {
			switch toks[j].kind {
			case 'i':
				ls = append(ls, toks[j].text)
			case ',':
			default:
				return nil, fmt.Errorf("%q in a label list", toks[j].text)
			}
		}
		return ls, nil
	}
	for i := 0; i < len(toks); i++ {
		tk := toks[i]
		if tk.kind != 'i' {
			continue
		}
		next := func(k int) byte {
			if i+k < len(toks) {
				return toks[i+k].kind
			}
			return 0
		}
		switch w := tk.text; {
		case w == "by" || w == "without" || w == "on" || w == "ignoring" || w == "group_left" || w == "group_right":
			if next(1) != '(' {
				if w == "group_left" || w == "group_right" {
					continue // no labels to copy
				}
				return nil, nil, fmt.Errorf("%s without a label list", w)
			}
			ls, err := labelList(i + 1)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %v", w, err)
			}
			after := match[i+1]
			p := pending{clause: w, labels: ls, from: 0, to: len(toks)}
			if w == "by" || w == "without" {
				// sum by (x) (body), or sum(body) by (x)
				if after+1 < len(toks) && toks[after+1].kind == '(' {
					p.from, p.to = after+1, match[after+1]
				} else if i > 0 && toks[i-1].kind == ')' {
					p.from, p.to = match[i-1], i-1
				} else {
					return nil, nil, fmt.Errorf("%s (%s): no operand", w, strings.Join(ls, ", "))
				}
			}
			groups = append(groups, p)
			i = after
		case w == "label_values":
			// Grafana's label_values([selector,] label)
			if next(1) != '(' {
				return nil, nil, fmt.Errorf("label_values without (")
			}
			end := match[i+1]
			if toks[end-1].kind != 'i' {
				return nil, nil, fmt.Errorf("label_values: no label")
			}
			groups = append(groups, pending{clause: w, labels: []string{toks[end-1].text}, from: i + 1, to: end - 1})
			// the selector is parsed by the loop; the label is not a metric
			toks[end-1].kind = 'l'
		case promFuncs[w] && next(1) == 'i' && (toks[i+1].text == "by" || toks[i+1].text == "without"):
			// an aggregation: sum by (x) (body)
		case next(1) == '(':
			if !promFuncs[w] {
				return nil, nil, fmt.Errorf("unknown function %s", w)
			}
		case promKeywords[strings.ToLower(w)]:
		default:
			s := promSelector{metric: w}
			if next(1) == '{' {
				open := i + 1
				close := match[open]
				for j := open + 1; j < close; {
					if toks[j].kind == ',' {
						j++
						continue
					}
					if j+2 >= close || toks[j].kind != 'i' || toks[j+1].kind != 'o' || toks[j+2].kind != 's' {
						return nil, nil, fmt.Errorf("%s: bad label matcher at %q", w, toks[j].text)
					}
					switch toks[j+1].text {
					case "=", "!=", "=~", "!~":
					default:
						return nil, nil, fmt.Errorf("%s: bad matcher operator %s", w, toks[j+1].text)
					}
					s.matchers = append(s.matchers, promMatcher{toks[j].text, toks[j+1].text, toks[j+2].text})
					j += 3
				}
				i = close
			}
			selAt[len(sels)] = i
			sels = append(sels, s)
		}
	}
	// The selectors each grouping applies to.
	var out []promGrouping
	for _, p := range groups {
		g := promGrouping{clause: p.clause, labels: p.labels}
		for si := range sels {
			if at := selAt[si]; at > p.from && at < p.to {
				g.metrics = append(g.metrics, si)
			}
		}
		if len(g.metrics) == 0 {
			return nil, nil, fmt.Errorf("%s (%s) applies to no metric", p.clause, strings.Join(p.labels, ", "))
		}
		out = append(out, g)
	}
	return sels, out, nil
}

// exposition is what a node's /metrics says: the type of each metric
// family and, per sample name, the values each label takes.
type exposition struct {
	types  map[string]string                     // family -> counter, gauge, histogram, ...
	labels map[string]map[string]map[string]bool // sample name -> label -> values
}

func parseExposition(raw string) exposition {
	e := exposition{types: map[string]string{}, labels: map[string]map[string]map[string]bool{}}
	for _, line := range strings.Split(raw, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			e.types[f[2]] = f[3]
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if j := strings.IndexAny(line, "{ "); j >= 0 {
			name, rest = line[:j], line[j:]
		}
		ls := e.labels[name]
		if ls == nil {
			ls = map[string]map[string]bool{}
			e.labels[name] = ls
		}
		if !strings.HasPrefix(rest, "{") {
			continue
		}
		// label="value",... with \" and \\ escapes in values
		for s := rest[1:]; len(s) > 0 && s[0] != '}'; {
			eq := strings.Index(s, `="`)
			if eq < 0 {
				break
			}
			k := strings.TrimLeft(s[:eq], ",")
			var v strings.Builder
			j := eq + 2
			for ; j < len(s) && s[j] != '"'; j++ {
				if s[j] == '\\' && j+1 < len(s) {
					j++
				}
				v.WriteByte(s[j])
			}
			if ls[k] == nil {
				ls[k] = map[string]bool{}
			}
			ls[k][v.String()] = true
			if j+1 > len(s) {
				break
			}
			s = s[j+1:]
		}
	}
	return e
}

// checkMetricName says what is wrong with a query naming metric, or "".
// Histogram series (_bucket, _sum, _count) need their family to be a
// histogram; any other name must be a family of its own, with samples.
func (e exposition) checkMetricName(metric string) string {
	if !strings.HasPrefix(metric, "caddy_shardcache_") {
		return "not a caddy_shardcache_* metric: the test cannot check it"
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(metric, suf)
		if !ok {
			continue
		}
		switch typ := e.types[base]; {
		case typ == "histogram" || typ == "summary" && suf != "_bucket":
			if e.labels[metric] == nil {
				return fmt.Sprintf("%s %s exports no %s samples", typ, base, metric)
			}
			return ""
		case typ != "":
			return fmt.Sprintf("%s is a %s, not a histogram", base, typ)
		}
		if e.types[metric] == "" {
			return fmt.Sprintf("no histogram %s (nor a metric %s)", base, metric)
		}
	}
	switch typ := e.types[metric]; typ {
	case "":
		return "no such metric"
	case "histogram", "summary":
		return fmt.Sprintf("a %s has no series of its own: query %s_bucket, _sum or _count", typ, metric)
	}
	if e.labels[metric] == nil {
		return "declared but no samples"
	}
	return ""
}

// plainAlternatives matches a regexp that is only literal alternatives:
// local|hot.
var plainAlternatives = regexp.MustCompile(`^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$`)

// checkQuery returns every problem of q against e: metric names, matcher
// labels and their literal values, grouping labels, legend labels.
func (e exposition) checkQuery(q grafanaQuery) []string {
	sels, groups, err := parsePromQL(q.expr)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v: %s", q.where, err, q.expr)}
	}
	if len(sels) == 0 {
		return []string{fmt.Sprintf("%s: queries no metric: %s", q.where, q.expr)}
	}
	var probs []string
	hasLabel := func(metric, label string) bool {
		return scrapeLabels[label] || e.labels[metric][label] != nil
	}
	for _, s := range sels {
		if why := e.checkMetricName(s.metric); why != "" {
			probs = append(probs, fmt.Sprintf("%s: %s: %s", q.where, s.metric, why))
			continue
		}
		for _, m := range s.matchers {
			if !hasLabel(s.metric, m.label) {
				probs = append(probs, fmt.Sprintf("%s: %s has no label %s", q.where, s.metric, m.label))
				continue
			}
			if scrapeLabels[m.label] || strings.Contains(m.value, "$") {
				continue
			}
			var want []string
			switch {
			case m.op == "=":
				want = []string{m.value}
			case m.op == "=~" && plainAlternatives.MatchString(m.value):
				want = strings.Split(m.value, "|")
			}
			for _, v := range want {
				if !e.labels[s.metric][m.label][v] {
					probs = append(probs, fmt.Sprintf("%s: %s{%s=%q}: no series has that value (it has %s)",
						q.where, s.metric, m.label, v, strings.Join(sortedKeys(e.labels[s.metric][m.label]), ", ")))
				}
			}
		}
	}
	for _, g := range groups {
		for _, l := range g.labels {
			for _, si := range g.metrics {
				if m := sels[si].metric; e.checkMetricName(m) == "" && !hasLabel(m, l) {
					probs = append(probs, fmt.Sprintf("%s: %s (%s): %s has no label %s", q.where, g.clause, strings.Join(g.labels, ", "), m, l))
				}
			}
		}
	}
	// {{label}} in the legend: a label of some metric of the query.
	for _, m := range regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`).FindAllStringSubmatch(q.legend, -1) {
		found := scrapeLabels[m[1]]
		for _, s := range sels {
			found = found || e.labels[s.metric][m[1]] != nil
		}
		if !found {
			probs = append(probs, fmt.Sprintf("%s: legend {{%s}}: no metric of the query has that label", q.where, m[1]))
		}
	}
	return probs
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestGrafanaDashboardChecker checks the checker itself, without Caddy, on
// a small exposition: it must refuse a misspelt metric, a histogram queried
// by its base name, a counter queried as a histogram, a missing label, a
// label value no series has, a grouping label the operand lacks, and a
// legend naming an absent label; and accept their correct forms.
func TestGrafanaDashboardChecker(t *testing.T) {
	e := parseExposition(`# HELP caddy_shardcache_requests_total x
# TYPE caddy_shardcache_requests_total counter
caddy_shardcache_requests_total{group="site",tier="local"} 3
caddy_shardcache_requests_total{group="site",tier="peer"} 1
# TYPE caddy_shardcache_peers gauge
caddy_shardcache_peers 1
# TYPE caddy_shardcache_peer_fetch_duration_seconds histogram
caddy_shardcache_peer_fetch_duration_seconds_bucket{le="0.001"} 1
caddy_shardcache_peer_fetch_duration_seconds_bucket{le="+Inf"} 1
caddy_shardcache_peer_fetch_duration_seconds_sum 0.0004
caddy_shardcache_peer_fetch_duration_seconds_count 1
`)
	good := []grafanaQuery{
		{expr: `sum by (tier) (rate(caddy_shardcache_requests_total{instance=~"$instance", group=~"$group", tier=~"local|peer"}[$__rate_interval]))`, legend: "{{tier}}"},
		{expr: `histogram_quantile(0.99, sum by (le) (rate(caddy_shardcache_peer_fetch_duration_seconds_bucket[5m])))`},
		{expr: `sum(rate(caddy_shardcache_peer_fetch_duration_seconds_sum[5m])) / sum(rate(caddy_shardcache_peer_fetch_duration_seconds_count[5m]))`},
		{expr: `sum(caddy_shardcache_peers) by (instance)`, legend: "{{instance}}"},
		{expr: `label_values(caddy_shardcache_requests_total{instance=~"$instance"}, group)`},
	}
	for _, q := range good {
		q.where = "good"
		if probs := e.checkQuery(q); len(probs) > 0 {
			t.Errorf("%s: refused: %s", q.expr, strings.Join(probs, "; "))
		}
	}
	bad := []struct{ expr, legend, want string }{
		{`rate(caddy_shardcache_request_total[5m])`, "", "no such metric"},
		{`caddy_shardcache_peer_fetch_duration_seconds`, "", "no series of its own"},
		{`rate(caddy_shardcache_requests_total_bucket[5m])`, "", "not a histogram"},
		{`caddy_shardcache_peers{group="site"}`, "", "has no label group"},
		{`caddy_shardcache_requests_total{tier="disk"}`, "", "no series has that value"},
		{`caddy_shardcache_requests_total{tier=~"local|disk"}`, "", "no series has that value"},
		{`sum by (group) (rate(caddy_shardcache_peer_fetch_duration_seconds_count[5m]))`, "", "has no label group"},
		{`sum(caddy_shardcache_peers) by (kind)`, "", "has no label kind"},
		{`caddy_shardcache_requests_total`, "{{kind}}", "legend {{kind}}"},
		{`label_values(caddy_shardcache_peers, group)`, "", "has no label group"},
		{`rate(process_cpu_seconds_total[5m])`, "", "cannot check it"},
		{`sum(rate(caddy_shardcache_requests_total[5m])`, "", "unclosed ("},
		{`summ(caddy_shardcache_peers)`, "", "unknown function summ"},
	}
	for _, b := range bad {
		probs := e.checkQuery(grafanaQuery{where: "bad", expr: b.expr, legend: b.legend})
		if len(probs) != 1 || !strings.Contains(probs[0], b.want) {
			t.Errorf("%s (legend %q): %q; want one problem saying %q", b.expr, b.legend, probs, b.want)
		}
	}
}

// TestGrafanaDashboardMetrics starts a two-node cluster, serves requests
// from the first node including peer fetches (so the peer tier, the hot
// cache and the fetch latency histogram have samples), scrapes /metrics on
// each node's admin endpoint, and checks every query of the dashboard
// against each scrape.
func TestGrafanaDashboardMetrics(t *testing.T) {
	queries := loadGrafanaDashboard(t)
	if t.Failed() {
		return
	}
	t.Logf("%d queries in %s", len(queries), grafanaDashboard)
	needCaddy(t)
	site := genClusterSite(40, 11)
	members := clusterMembers(2)
	roots := writeClusterRoots(t, members, site)
	nodes := startClusterNodes(t, newClusterSecret(t), clusterConfigs(t, members, roots))
	if !waitClusterReady(t, nodes, site.paths(), len(site)) {
		return
	}
	n1 := nodes[0]
	var remote []string
	for _, p := range site.paths() {
		if n1.mustWhere(t, p).Owner == nodes[1].name && len(site.file(p)) > 0 {
			remote = append(remote, p)
		}
	}
	if len(remote) == 0 {
		t.Fatalf("no non-empty file of %d is owned by %s", len(site), nodes[1].name)
	}
	// Three GETs of each path n2 owns: a peer fetch, then the copy the hot
	// cache admits on the second request, then a hot hit.
	for round := 0; round < 3; round++ {
		for _, p := range remote {
			if r := get(t, n1.base, p); r.status != 200 || string(r.body) != string(site.file(p)) {
				t.Fatalf("n1: GET %s: %d %s; want 200 and its %d bytes", p, r.status, clusterPreview(r.body), len(site.file(p)))
			}
		}
	}
	for _, p := range site.paths()[:5] {
		get(t, n1.base, p)
	}

	for _, n := range nodes {
		samples, raw, err := scrapeMetrics(n)
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		e := parseExposition(raw)
		var probs []string
		for _, q := range queries {
			probs = append(probs, e.checkQuery(q)...)
		}
		for _, p := range probs {
			t.Errorf("%s /metrics: %s", n.name, p)
		}
		if len(probs) > 0 {
			var ours []string
			for name := range e.types {
				if strings.HasPrefix(name, "caddy_shardcache_") {
					ours = append(ours, name+" ("+e.types[name]+")")
				}
			}
			sort.Strings(ours)
			t.Logf("%s exports: %s", n.name, strings.Join(ours, ", "))
		}
		if n != n1 {
			continue
		}
		// The scrape has the samples the latency and tier panels show.
		if v, ok := metricValue(samples, "caddy_shardcache_peer_fetch_duration_seconds_count"); !ok || v < float64(len(remote)) {
			t.Errorf("n1: peer_fetch_duration_seconds_count %v (present %v); want at least %d", v, ok, len(remote))
		}
		if v, _ := metricValue(samples, "caddy_shardcache_requests_total", `tier="peer"`); v < float64(len(remote)) {
			t.Errorf("n1: requests_total{tier=\"peer\"} %v; want at least %d", v, len(remote))
		}
		if v, _ := metricValue(samples, "caddy_shardcache_hot_admissions_total"); v == 0 {
			t.Errorf("n1: hot_admissions_total 0 after requesting each of %d remote paths three times", len(remote))
		}
		if v, _ := metricValue(samples, "caddy_shardcache_peers_up"); v != 1 {
			t.Errorf("n1: peers_up %v; want 1", v)
		}
	}
}
