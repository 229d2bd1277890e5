package integration

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The packaging examples (Dockerfile, examples/compose, examples/systemd)
// cannot run here (no container runtime, no systemd). These tests check
// that their pieces fit together; TestExamplesAdapt adapts their
// Caddyfiles, TestExamplesPackagingValidate provisions them.

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]yaml.Node      `yaml:"networks"`
	Volumes  map[string]struct {
		Driver     string            `yaml:"driver"`
		DriverOpts map[string]string `yaml:"driver_opts"`
	} `yaml:"volumes"`
}

type composeService struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Image    string            `yaml:"image"`
	EnvFile  yaml.Node         `yaml:"env_file"` // a string or a list
	Networks []string          `yaml:"networks"`
	Ports    []string          `yaml:"ports"`
	Volumes  []string          `yaml:"volumes"`
	Sysctls  map[string]string `yaml:"sysctls"`
}

func (s composeService) envFiles() []string {
	switch s.EnvFile.Kind {
	case yaml.ScalarNode:
		return []string{s.EnvFile.Value}
	case yaml.SequenceNode:
		var out []string
		for _, n := range s.EnvFile.Content {
			out = append(out, n.Value)
		}
		return out
	}
	return nil
}

// caddyfileDirective returns the arguments of every line of cf whose first
// word is name (comments ignored).
func caddyfileDirective(cf, name string) [][]string {
	var out [][]string
	for _, l := range strings.Split(cf, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == name {
			out = append(out, f[1:])
		}
	}
	return out
}

func readExample(t *testing.T, parts ...string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(append([]string{repoRoot, "examples"}, parts...)...))
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// TestExamplesPackagingDockerfile checks the top-level Dockerfile: the
// builder and runtime images of one Caddy version, the Caddy of go.mod,
// the plugin from the build context, and the exposed ports.
func TestExamplesPackagingDockerfile(t *testing.T) {
	if testing.Short() {
		t.Skip("needs repoRoot from TestMain")
	}
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github.com/caddyserver/caddy/v2 (v\S+)`).FindStringSubmatch(string(gomod))
	if m == nil {
		t.Fatal("go.mod requires no github.com/caddyserver/caddy/v2")
	}
	caddyVersion := m[1]
	for _, want := range []string{
		"ARG CADDY_IMAGE_VERSION=" + strings.TrimPrefix(caddyVersion, "v") + "\n",
		"FROM caddy:${CADDY_IMAGE_VERSION}-builder AS builder\n",
		"ARG CADDY_VERSION=" + caddyVersion + "\n",
		"--with github.com/shardcache/caddy-shardcache=. ",
		"COPY . .\n",
		"FROM caddy:${CADDY_IMAGE_VERSION}\n",
		"COPY --from=builder /usr/bin/caddy /usr/bin/caddy\n",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile has no %q", want)
		}
	}
	var exposed []string
	for _, l := range strings.Split(df, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "EXPOSE" {
			exposed = append(exposed, f[1:]...)
		}
	}
	for _, p := range []string{"80", "443", "443/udp", "7946/udp"} {
		if !slices.Contains(exposed, p) {
			t.Errorf("Dockerfile exposes %v, not %s", exposed, p)
		}
	}
	ign, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(ign), "\n") {
		if l = strings.TrimSpace(l); l == "go.mod" || l == "go.sum" || l == "*.go" || l == "*" {
			t.Errorf(".dockerignore leaves out %s, which the build needs", l)
		}
	}
}

// TestExamplesPackagingCompose checks examples/compose/compose.yaml
// without Docker: it parses, the services are there and built from the
// top-level Dockerfile, each mounts its own Caddyfile, all read the secret
// from .env, the SAN and lan addresses in the Caddyfiles are the services'
// names on the one network, the site volume is every node's root.
func TestExamplesPackagingCompose(t *testing.T) {
	if testing.Short() {
		t.Skip("needs repoRoot from TestMain")
	}
	dir := filepath.Join(repoRoot, "examples", "compose")
	raw, err := os.ReadFile(filepath.Join(dir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	nodes := []string{"n1", "n2", "n3"}
	all := append(slices.Clone(nodes), "director")
	if len(cf.Services) != len(all) {
		t.Errorf("compose.yaml has %d services, want %v", len(cf.Services), all)
	}
	if len(cf.Networks) != 1 {
		t.Fatalf("compose.yaml defines networks %v, want one", cf.Networks)
	}
	var network string
	for n := range cf.Networks {
		network = n
	}

	env := readExample(t, "compose", ".env.example")
	if !regexp.MustCompile(`(?m)^SHARDCACHE_SECRET=$`).MatchString(env) {
		t.Errorf(".env.example has no empty SHARDCACHE_SECRET= line")
	}
	if gi := readExample(t, "compose", ".gitignore"); !slices.Contains(strings.Fields(gi), ".env") {
		t.Errorf("examples/compose/.gitignore does not ignore .env (the secret)")
	}

	for _, name := range all {
		s, ok := cf.Services[name]
		if !ok {
			t.Errorf("compose.yaml has no service %s", name)
			continue
		}
		if s.Build == nil || filepath.Clean(filepath.Join(dir, s.Build.Context)) != repoRoot || s.Build.Dockerfile != "Dockerfile" {
			t.Errorf("%s: build %+v, want the top-level Dockerfile with the repository as context", name, s.Build)
		}
		if !slices.Equal(s.envFiles(), []string{".env"}) {
			t.Errorf("%s: env_file %v, want .env", name, s.envFiles())
		}
		if !slices.Equal(s.Networks, []string{network}) {
			t.Errorf("%s: networks %v, want [%s]", name, s.Networks, network)
		}
		for k := range s.Sysctls {
			if strings.HasPrefix(k, "net.core.") {
				t.Errorf("%s: sysctl %s is not namespaced; Docker refuses it", name, k)
			}
		}
		// Its Caddyfile, mounted where caddy:2.11.9's CMD reads it.
		want := "./" + name + ".Caddyfile:/etc/caddy/Caddyfile:ro"
		if !slices.Contains(s.Volumes, want) {
			t.Errorf("%s: volumes %v, want %s", name, s.Volumes, want)
		}
		caddyfile := readExample(t, "compose", name+".Caddyfile")
		if !strings.Contains(caddyfile, "secret {env.SHARDCACHE_SECRET}") {
			t.Errorf("%s.Caddyfile does not read the secret from {env.SHARDCACHE_SECRET}", name)
		}
		// The SAN address is the service's name, the peers are the others.
		nodeLine := caddyfileDirective(caddyfile, "node")
		if len(nodeLine) != 1 || !slices.Equal(nodeLine[0], []string{name, name + ":7946"}) {
			t.Errorf("%s.Caddyfile: node %v, want node %s %s:7946", name, nodeLine, name, name)
		}
		var peers []string
		for _, p := range caddyfileDirective(caddyfile, "peer") {
			if len(p) != 2 || p[1] != p[0]+":7946" {
				t.Errorf("%s.Caddyfile: peer %v, want <service> <service>:7946", name, p)
				continue
			}
			peers = append(peers, p[0])
		}
		wantPeers := slices.DeleteFunc(slices.Clone(nodes), func(n string) bool { return n == name })
		if !slices.Equal(peers, wantPeers) {
			t.Errorf("%s.Caddyfile: peers %v, want %v", name, peers, wantPeers)
		}
		if name == "director" {
			if len(s.Ports) != 1 || !strings.HasSuffix(s.Ports[0], ":80") {
				t.Errorf("director: ports %v, want one published port to its :80", s.Ports)
			}
			if !strings.Contains(caddyfile, "dynamic shardcache") || !strings.Contains(caddyfile, "lb_policy shardcache") {
				t.Errorf("director.Caddyfile: want reverse_proxy with dynamic shardcache and lb_policy shardcache")
			}
			continue
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s: publishes %v; only the director is reached from outside", name, s.Ports)
		}
		if lan := caddyfileDirective(caddyfile, "lan"); len(lan) != 1 || !slices.Equal(lan[0], []string{name + ":80"}) {
			t.Errorf("%s.Caddyfile: lan %v, want %s:80 (its site, :80)", name, lan, name)
		}
		if !strings.Contains(caddyfile, "\n:80 {\n") {
			t.Errorf("%s.Caddyfile: no site :80 (the port lan names)", name)
		}
		if !slices.Contains(s.Volumes, "site:/srv/www:ro") ||
			!slices.ContainsFunc(caddyfileDirective(caddyfile, "root"), func(a []string) bool { return slices.Equal(a, []string{"/srv/www"}) }) {
			t.Errorf("%s: the site volume is not mounted at the Caddyfile's root /srv/www (volumes %v)", name, s.Volumes)
		}
	}
	if v, ok := cf.Volumes["site"]; !ok || v.DriverOpts["o"] != "bind" || !strings.Contains(v.DriverOpts["device"], "SHARDCACHE_SITE") {
		t.Errorf("volume site: %+v, want a bind of ${SHARDCACHE_SITE}", v)
	}
}

// unit is a systemd unit file: section -> key -> values, in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, text string) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" || strings.HasSuffix(l, "\\") {
				t.Fatalf("unit line %d: %q is not key=value in a section", n, l)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// configFlag returns the value of --config in a command line.
func configFlag(cmd string) string {
	f := strings.Fields(cmd)
	for i, a := range f {
		if a == "--config" && i+1 < len(f) {
			return f[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			return v
		}
	}
	return ""
}

// TestExamplesPackagingSystemd checks examples/systemd without systemd:
// the unit's key lines (Caddy's caddy.service, plus the secret's
// EnvironmentFile), that ExecStart and ExecReload read the Caddyfile
// where README.md installs it, and the sysctl file.
func TestExamplesPackagingSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("needs repoRoot from TestMain")
	}
	u := parseUnit(t, readExample(t, "systemd", "caddy-shardcache.service"))
	want := map[string]map[string]string{
		"Unit": {"After": "network.target network-online.target", "Requires": "network-online.target"},
		"Service": {
			"Type": "notify", "User": "caddy", "Group": "caddy",
			"EnvironmentFile": "/etc/caddy/shardcache.env",
			"TimeoutStopSec":  "5s", "LimitNOFILE": "1048576",
			"PrivateTmp": "true", "ProtectSystem": "full",
			"AmbientCapabilities": "CAP_NET_BIND_SERVICE",
		},
		"Install": {"WantedBy": "multi-user.target"},
	}
	for sec, kv := range want {
		for k, v := range kv {
			if got := u[sec][k]; !slices.Equal(got, []string{v}) {
				t.Errorf("[%s] %s=%v, want %s", sec, k, got, v)
			}
		}
	}
	start, reload := u["Service"]["ExecStart"], u["Service"]["ExecReload"]
	if len(start) != 1 || !strings.HasPrefix(start[0], "/usr/bin/caddy run ") {
		t.Fatalf("ExecStart=%v, want one /usr/bin/caddy run ...", start)
	}
	if strings.Contains(start[0], "--environ") {
		t.Errorf("ExecStart=%s: --environ prints the environment, the secret included, to the journal", start[0])
	}
	if len(reload) != 1 || !strings.HasPrefix(reload[0], "/usr/bin/caddy reload ") || !strings.Contains(reload[0], " --force") {
		t.Errorf("ExecReload=%v, want /usr/bin/caddy reload --config ... --force", reload)
	}
	config := configFlag(start[0])
	if config == "" || len(reload) == 1 && configFlag(reload[0]) != config {
		t.Errorf("ExecStart reads %q, ExecReload %v: want the same --config", config, reload)
	}

	// README.md installs this directory's files; the Caddyfile and the
	// env file where the unit reads them.
	readme := readExample(t, "systemd", "README.md")
	installed := map[string]string{}
	for _, l := range strings.Split(readme, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && (f[0] == "install" || f[0] == "sudo" && len(f) >= 4 && f[1] == "install") {
			installed[f[len(f)-2]] = f[len(f)-1]
		}
	}
	for src, dst := range map[string]string{
		"Caddyfile":                config,
		"shardcache.env.example":   u["Service"]["EnvironmentFile"][0],
		"caddy-shardcache.service": "/etc/systemd/system/caddy-shardcache.service",
		"99-shardcache-udp.conf":   "/etc/sysctl.d/99-shardcache-udp.conf",
	} {
		if installed[src] != dst {
			t.Errorf("README.md installs %s at %q, want %q (installed: %v)", src, installed[src], dst, installed)
		}
		if _, err := os.Stat(filepath.Join(repoRoot, "examples", "systemd", src)); err != nil {
			t.Error(err)
		}
	}
	if !strings.Contains(readExample(t, "systemd", "Caddyfile"), "secret {env.SHARDCACHE_SECRET}") {
		t.Errorf("examples/systemd/Caddyfile does not read the secret from {env.SHARDCACHE_SECRET}")
	}
	if !regexp.MustCompile(`(?m)^SHARDCACHE_SECRET=$`).MatchString(readExample(t, "systemd", "shardcache.env.example")) {
		t.Errorf("shardcache.env.example has no empty SHARDCACHE_SECRET= line")
	}

	sysctl := map[string]string{}
	for _, l := range strings.Split(readExample(t, "systemd", "99-shardcache-udp.conf"), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			k, v, _ := strings.Cut(l, "=")
			sysctl[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if sysctl["net.core.rmem_max"] != "7500000" || sysctl["net.core.wmem_max"] != "7500000" || len(sysctl) != 2 {
		t.Errorf("99-shardcache-udp.conf sets %v, want net.core.rmem_max and wmem_max = 7500000", sysctl)
	}
}

// TestExamplesPackagingValidate runs `caddy validate` on the compose and
// systemd Caddyfiles (their root moved to the demo site) with a secret in
// the environment, and without one: an unfilled .env or shardcache.env
// fails at start, naming the variable.
func TestExamplesPackagingValidate(t *testing.T) {
	needCaddy(t)
	secret := newClusterSecret(t)
	dir := t.TempDir()
	for _, name := range []string{"compose/n1.Caddyfile", "compose/n2.Caddyfile", "compose/n3.Caddyfile", "compose/director.Caddyfile", "systemd/Caddyfile"} {
		t.Run(name, func(t *testing.T) {
			cf := strings.ReplaceAll(readExample(t, filepath.FromSlash(name)), "root /srv/www", "root "+filepath.Join(repoRoot, "examples", "single", "site"))
			path := filepath.Join(dir, strings.ReplaceAll(name, "/", "-"))
			if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
				t.Fatal(err)
			}
			out, stderr, err := runCaddyEnv(t, 30*time.Second, []string{clusterSecretEnv + "=" + secret}, "adapt", "--config", path, "--adapter", "caddyfile")
			if err != nil {
				t.Fatalf("adapt: %v\n%s", err, stderr)
			}
			if strings.Contains(out, secret) {
				t.Errorf("the secret's value is in the adapted JSON")
			}
			if _, stderr, err := runCaddyEnv(t, 30*time.Second, []string{clusterSecretEnv + "=" + secret}, "validate", "--config", path, "--adapter", "caddyfile"); err != nil {
				t.Errorf("validate with the secret set: %v\n%s", err, stderr)
			}
			_, stderr, err = runCaddyEnv(t, 30*time.Second, []string{clusterSecretEnv + "="}, "validate", "--config", path, "--adapter", "caddyfile")
			if err == nil || !strings.Contains(stderr, "{env."+clusterSecretEnv+"}") {
				t.Errorf("validate with an empty secret: err %v, want a refusal naming {env.%s}:\n%s", err, clusterSecretEnv, stderr)
			}
		})
	}
}
