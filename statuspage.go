package shardcache

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/shardcache/caddy-shardcache/cluster"
)

// The status page: GET /shardcache/ on the admin endpoint renders the same
// data as GET /shardcache/status as one HTML page (inline CSS, no script,
// nothing loaded from elsewhere) that reloads itself every 2 seconds.

//go:embed statuspage/page.html
var statusPageFS embed.FS

var statusPageTmpl = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"human":   human,
	"yesNo":   yesNo,
	"pct":     pctWidth,
	"clamp":   clampPercent,
	"joinOr":  joinOr,
	"percent": func(f float64) float64 { return 100 * f },
}).ParseFS(statusPageFS, "statuspage/page.html"))

// statusPage is what the page template renders.
type statusPage struct {
	Status
	// Director: the node is an observer (a content director): no groups,
	// in no ring.
	Director bool
	Groups   []groupPage
}

// groupPage is one group with its tiers in a fixed order.
type groupPage struct {
	GroupStatus
	Tiers         []tierRow
	TotalRequests int64
	TotalBytes    int64
}

// tierRow is one tier's counters and its share of the group's requests and
// bytes (0-100).
type tierRow struct {
	Name         string
	Requests     int64
	Bytes        int64
	RequestShare float64
	ByteShare    float64
}

// tierOrder is the order tiers are shown in: nearest first.
var tierOrder = []string{"local", "hot", "peer", "storage"}

func newStatusPage(st Status, director bool) statusPage {
	p := statusPage{Status: st, Director: director}
	for _, g := range st.Groups {
		gp := groupPage{GroupStatus: g}
		for _, t := range g.Tiers {
			gp.TotalRequests += t.Requests
			gp.TotalBytes += t.Bytes
		}
		names := append([]string(nil), tierOrder...)
		for name := range g.Tiers {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
		for _, name := range names {
			t, ok := g.Tiers[name]
			if !ok {
				continue // a single node has no hot or peer tier
			}
			gp.Tiers = append(gp.Tiers, tierRow{
				Name: name, Requests: t.Requests, Bytes: t.Bytes,
				RequestShare: share(t.Requests, gp.TotalRequests),
				ByteShare:    share(t.Bytes, gp.TotalBytes),
			})
		}
		p.Groups = append(p.Groups, gp)
	}
	return p
}

func share(n, total int64) float64 {
	if total <= 0 || n <= 0 {
		return 0
	}
	return clampPercent(100 * float64(n) / float64(total))
}

func clampPercent(f float64) float64 {
	switch {
	case f != f || f < 0: // NaN too
		return 0
	case f > 100:
		return 100
	}
	return f
}

// pctWidth is n of total as a CSS width percentage ("37.5").
func pctWidth(n, total int64) string {
	return fmt.Sprintf("%.1f", share(n, total))
}

func joinOr(list []string, none string) string {
	if len(list) == 0 {
		return none
	}
	return strings.Join(list, ", ")
}

// MemberGroups lists a member's advertised groups, each with "(priming)"
// if not ready.
func (statusPage) MemberGroups(m cluster.MemberStatus) string {
	var out []string
	for _, g := range m.Groups {
		if g.Ready {
			out = append(out, g.Name)
		} else {
			out = append(out, g.Name+" (priming)")
		}
	}
	return joinOr(out, "-")
}

// InRing reports whether name is on this node's ring.
func (p statusPage) InRing(name string) bool { return slices.Contains(p.Ring, name) }

// renderStatusPage writes the page for st.
func renderStatusPage(w *bytes.Buffer, st Status, director bool) error {
	return statusPageTmpl.Execute(w, newStatusPage(st, director))
}

func handleStatusPage(w http.ResponseWriter, r *http.Request) error {
	// "/shardcache/" is a subtree pattern: the more specific routes
	// (/shardcache/status, ...) win, and anything else under it is not
	// the page. (The admin mux redirects /shardcache to /shardcache/.)
	if r.URL.Path != "/shardcache/" && r.URL.Path != "/shardcache" {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("%s: no such shardcache admin route (the page is /shardcache/)", r.URL.Path)}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	page, err := currentStatusPage()
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	writeStatusPage(w, r, page)
	return nil
}

// currentStatusPage renders the page of the running config.
func currentStatusPage() ([]byte, error) {
	_, c := reg.get()
	var buf bytes.Buffer
	if err := renderStatusPage(&buf, currentStatus(), c != nil && c.Observer()); err != nil {
		return nil, fmt.Errorf("rendering the status page: %v", err)
	}
	return buf.Bytes(), nil
}
