package shardcache

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "shardcache",
		Usage: "status [--address <admin>] | secret",
		Short: "Shows a shardcache node's state, or makes a cluster secret",
		Long: `
status asks a running node's admin API (/shardcache/status) and prints its
members and, per group, priming, memory and the share of requests each tier
answered.

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
			status.Flags().String("address", "", "Address of the admin API (default: from the config, or localhost:2019)")
			status.Flags().StringP("config", "c", "", "Configuration file to read the admin address from")
			status.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (if --config is used)")
			secret := &cobra.Command{
				Use:   "secret",
				Short: "Print a fresh random cluster secret",
				RunE: func(*cobra.Command, []string) error {
					fmt.Println(newSecret())
					return nil
				},
			}
			cmd.AddCommand(status, secret)
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
