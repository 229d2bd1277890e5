package shardcache

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "shardcache",
		Usage: "status | where <path> | purge <path> | purge --prefix <prefix> [--address <admin>] | secret",
		Short: "Shows a shardcache node's state, where a path is, purges, or makes a cluster secret",
		Long: `
status asks a running node's admin API (/shardcache/status) and prints its
members and, per group, priming, memory and the share of requests each tier
answered. The same, as a page that refreshes itself, is at
http://<admin>/shardcache/ in a browser.

where <path> asks /shardcache/where which member owns the path and holds
it, its version and size, and whether its bytes are in the node's memory.

purge <path>, or purge --prefix <prefix>, asks /shardcache/purge to drop
hot copies cluster-wide and re-read the files from storage on their owners.

secret prints a fresh random cluster secret for the shardcache global
option's secret (put it in an environment variable, not in the Caddyfile).
`,
		CobraFunc: func(cmd *cobra.Command) {
			status := &cobra.Command{
				Use:   "status",
				Short: "Print the node's cluster state as a table",
				RunE: caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
					return cmdStatus(fl, os.Stdout)
				}),
			}
			adminFlags(status)
			secret := &cobra.Command{
				Use:   "secret",
				Short: "Print a fresh random cluster secret",
				RunE: func(*cobra.Command, []string) error {
					fmt.Println(newSecret())
					return nil
				},
			}
			where := &cobra.Command{
				Use:   "where <path>",
				Short: "Print who owns a path and where it is held, as a table",
				Args:  cobra.ExactArgs(1),
				RunE: caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
					return cmdWhere(fl, os.Stdout)
				}),
			}
			adminFlags(where)
			purge := &cobra.Command{
				Use:   "purge <path> | purge --prefix <prefix>",
				Short: "Drop hot copies cluster-wide and re-read the files on their owners",
				Args:  cobra.MaximumNArgs(1),
				RunE: caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
					return cmdPurge(fl, os.Stdout)
				}),
			}
			purge.Flags().String("prefix", "", "Purge every path starting with this prefix (instead of one path)")
			purge.Flags().String("group", "", "Purge in this group only (default: every group)")
			adminFlags(purge)
			cmd.AddCommand(status, where, purge, secret)
		},
	})
}

// newSecret returns 32 random bytes, base64url-encoded.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

func cmdStatus(fl caddycmd.Flags, out io.Writer) (int, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy1, fmt.Errorf("finding the admin API: %v", err)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, "/shardcache/status", nil, nil)
	if err != nil {
		return caddy1, err
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return caddy1, fmt.Errorf("decoding /shardcache/status: %v", err)
	}
	printStatus(out, st)
	return 0, nil
}

// adminAddress is the admin endpoint the flags name.
func adminAddress(fl caddycmd.Flags) (string, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return "", fmt.Errorf("finding the admin API: %v", err)
	}
	return addr, nil
}

// wherePathArg checks the path argument of `where`.
func wherePathArg(args []string) (string, error) {
	if len(args) != 1 {
		return "", fmt.Errorf("want one path: caddy shardcache where /css/site.css")
	}
	if !strings.HasPrefix(args[0], "/") {
		return "", fmt.Errorf("path %q: must start with /", args[0])
	}
	return args[0], nil
}

func cmdWhere(fl caddycmd.Flags, out io.Writer) (int, error) {
	p, err := wherePathArg(fl.Args())
	if err != nil {
		return caddy1, err
	}
	addr, err := adminAddress(fl)
	if err != nil {
		return caddy1, err
	}
	uri := "/shardcache/where?path=" + url.QueryEscape(p)
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, uri, nil, nil)
	if err != nil {
		return caddy1, fmt.Errorf("GET %s on %s: %v", uri, addr, err)
	}
	defer resp.Body.Close()
	var ws []Where
	if err := json.NewDecoder(resp.Body).Decode(&ws); err != nil {
		return caddy1, fmt.Errorf("decoding %s: %v", uri, err)
	}
	printWhere(out, p, ws)
	return 0, nil
}

// printWhere writes the answer of /shardcache/where as a table, one row
// per group.
func printWhere(out io.Writer, p string, ws []Where) {
	if len(ws) == 0 {
		fmt.Fprintf(out, "%s: the node has no groups\n", p)
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "PATH\tGROUP\tOWNER\tHOLDERS\tHERE\tFOUND\tVERSION\tSIZE\tIN MEMORY\n")
	for _, w := range ws {
		group, version, size := w.Group, w.Version, "-"
		if group == "" {
			group = "-"
		}
		if version == "" {
			version = "-"
		}
		if w.Found {
			size = human(w.Size)
		}
		resident := yesNo(w.Resident)
		if w.Chunks > 0 {
			resident = fmt.Sprintf("%s (%d/%d chunks hot)", resident, w.HotChunks, w.Chunks)
		}
		holders := strings.Join(w.Holders, ",")
		if holders == "" {
			holders = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			w.Path, group, w.Owner, holders, yesNo(w.Local), yesNo(w.Found), version, size, resident)
	}
	tw.Flush()
}

// purgeRequestArgs builds the body of POST /shardcache/purge from
// `purge`'s arguments: one path, or --prefix.
func purgeRequestArgs(args []string, prefix, group string) (PurgeRequest, error) {
	req := PurgeRequest{Prefix: prefix, Group: group}
	switch {
	case len(args) > 1:
		return req, fmt.Errorf("want one path or --prefix, got %d arguments: %q", len(args), args)
	case len(args) == 1 && prefix != "":
		return req, fmt.Errorf("give a path (%q) or --prefix (%q), not both", args[0], prefix)
	case len(args) == 1:
		if !strings.HasPrefix(args[0], "/") {
			return req, fmt.Errorf("path %q: must start with /", args[0])
		}
		req.Path = args[0]
	case prefix != "":
		if !strings.HasPrefix(prefix, "/") {
			return req, fmt.Errorf("--prefix %q: must start with /", prefix)
		}
	default:
		return req, fmt.Errorf("want a path (caddy shardcache purge /css/site.css) or --prefix (caddy shardcache purge --prefix /img/)")
	}
	return req, nil
}

func cmdPurge(fl caddycmd.Flags, out io.Writer) (int, error) {
	req, err := purgeRequestArgs(fl.Args(), fl.String("prefix"), fl.String("group"))
	if err != nil {
		return caddy1, err
	}
	addr, err := adminAddress(fl)
	if err != nil {
		return caddy1, err
	}
	body, _ := json.Marshal(req)
	hdr := http.Header{"Content-Type": []string{"application/json"}}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodPost, "/shardcache/purge", hdr, bytes.NewReader(body))
	if err != nil {
		return caddy1, fmt.Errorf("POST /shardcache/purge %s on %s: %v", body, addr, err)
	}
	defer resp.Body.Close()
	var res PurgeResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return caddy1, fmt.Errorf("decoding /shardcache/purge: %v", err)
	}
	what := "path " + req.Path
	if req.Prefix != "" {
		what = "prefix " + req.Prefix
	}
	if req.Group != "" {
		what += " in group " + req.Group
	}
	fmt.Fprintf(out, "purged %s: %d hot copies dropped and %d files re-read on this node; sent to the other members: %s\n",
		what, res.HotDropped, res.Refreshed, yesNo(res.Broadcast))
	return 0, nil
}

const caddy1 = 1 // caddy's exit code for a failed command

// printStatus writes st as tables a person can read.
func printStatus(out io.Writer, st Status) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if st.Node != "" {
		fmt.Fprintf(tw, "NODE\tSAN\tUP\tREADY\n")
		fmt.Fprintf(tw, "%s (this)\t%s\tyes\t%s\n", st.Node, st.SAN, yesNo(st.Ready))
		for _, m := range st.Members {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, m.Address, yesNo(m.Up), yesNo(m.Up && m.Ready))
		}
		fmt.Fprintln(tw)
	}
	if len(st.Groups) == 0 {
		tw.Flush()
		return
	}
	fmt.Fprintf(tw, "GROUP\tROOT\tREADY\tPRIMED\tITEMS\tBYTES\tHOT ITEMS\tHOT BYTES\tLOCAL\tHOT\tPEER\tSTORAGE\n")
	for _, g := range st.Groups {
		var hotItems, hotBytes int64
		if g.Hot != nil {
			hotItems, hotBytes = g.Hot.Items, g.Hot.Bytes
		}
		var total int64
		for _, t := range g.Tiers {
			total += t.Requests
		}
		share := func(tier string) string {
			if total == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f%%", 100*float64(g.Tiers[tier].Requests)/float64(total))
		}
		name := g.Group
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f%%\t%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n",
			name, g.Root, yesNo(g.Ready), g.Progress.Percent, g.PrimedItems, human(g.PrimedBytes),
			hotItems, human(hotBytes), share("local"), share("hot"), share("peer"), share("storage"))
	}
	tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// adminFlags adds the flags that say where the admin API is, as every
// subcommand that talks to it takes them.
func adminFlags(cmd *cobra.Command) {
	cmd.Flags().String("address", "", "Address of the admin API (default: from the config, or localhost:2019)")
	cmd.Flags().StringP("config", "c", "", "Configuration file to read the admin address from")
	cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (if --config is used)")
}
