package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// k8sDoc is the part of a Kubernetes object these tests look at.
type k8sDoc struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		ClusterIP                string           `yaml:"clusterIP"`
		PublishNotReadyAddresses bool             `yaml:"publishNotReadyAddresses"`
		Selector                 yaml.Node        `yaml:"selector"`
		Ports                    []k8sServicePort `yaml:"ports"`
		ServiceName              string           `yaml:"serviceName"`
		Replicas                 *int             `yaml:"replicas"`
		Template                 *k8sPodTemplate  `yaml:"template"`
	} `yaml:"spec"`
}

type k8sServicePort struct {
	Name     string `yaml:"name"`
	Protocol string `yaml:"protocol"`
	Port     int    `yaml:"port"`
}

type k8sPodTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		InitContainers []k8sContainer `yaml:"initContainers"`
		Containers     []k8sContainer `yaml:"containers"`
		Volumes        []struct {
			Name      string `yaml:"name"`
			ConfigMap *struct {
				Name string `yaml:"name"`
			} `yaml:"configMap"`
		} `yaml:"volumes"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	ReadinessProbe *struct {
		Exec *struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	} `yaml:"readinessProbe"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

// loadK8s parses every document of examples/kubernetes/shardcache.yaml
// (fields k8sDoc does not describe are ignored; a document that is not
// YAML, or a field of the wrong type, is an error) and returns them by
// kind/name, with the keys in the file's order.
func loadK8s(t *testing.T) (map[string]k8sDoc, []string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "examples", "kubernetes", "shardcache.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]k8sDoc{}
	var order []string
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var d k8sDoc
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("shardcache.yaml: document %d: %v", len(order)+1, err)
		}
		if d.Kind == "" || d.APIVersion == "" || d.Metadata.Name == "" {
			t.Fatalf("shardcache.yaml: document %d has no kind, apiVersion or name: %+v", len(order)+1, d)
		}
		key := d.Kind + "/" + d.Metadata.Name
		if _, dup := docs[key]; dup {
			t.Fatalf("shardcache.yaml: %s twice", key)
		}
		docs[key] = d
		order = append(order, key)
	}
	return docs, order
}

// TestExamplesK8sManifest checks examples/kubernetes/shardcache.yaml
// without a cluster: every document parses, the kinds and API versions are
// the expected ones, the ConfigMaps hold the example Caddyfiles byte for
// byte, and the pieces fit together (the SRV name the Caddyfiles look up
// is the headless Service's named UDP port, the env the Caddyfiles read is
// set, selectors match the pods' labels, the probe reads the status).
func TestExamplesK8sManifest(t *testing.T) {
	if testing.Short() {
		t.Skip("needs repoRoot from TestMain")
	}
	docs, order := loadK8s(t)
	want := map[string]string{
		"Secret/shardcache-secret":                "v1",
		"ConfigMap/shardcache-caddyfile":          "v1",
		"ConfigMap/shardcache-director-caddyfile": "v1",
		"Service/shardcache":                      "v1",
		"StatefulSet/shardcache":                  "apps/v1",
		"PodDisruptionBudget/shardcache":          "policy/v1",
		"Deployment/shardcache-director":          "apps/v1",
		"Service/shardcache-director":             "v1",
	}
	for key, api := range want {
		d, ok := docs[key]
		if !ok {
			t.Errorf("shardcache.yaml has no %s (it has %v)", key, order)
			continue
		}
		if d.APIVersion != api {
			t.Errorf("%s: apiVersion %s, want %s", key, d.APIVersion, api)
		}
	}
	if len(order) != len(want) {
		t.Errorf("shardcache.yaml has %d documents %v, want %d", len(order), order, len(want))
	}

	// The ConfigMaps are the example Caddyfiles, byte for byte.
	for cm, file := range map[string]string{
		"ConfigMap/shardcache-caddyfile":          "Caddyfile",
		"ConfigMap/shardcache-director-caddyfile": "director.Caddyfile",
	} {
		onDisk, err := os.ReadFile(filepath.Join(repoRoot, "examples", "kubernetes", file))
		if err != nil {
			t.Fatal(err)
		}
		if got := docs[cm].Data["Caddyfile"]; got != string(onDisk) {
			t.Errorf("%s's Caddyfile differs from examples/kubernetes/%s (copy the file into the ConfigMap, indented by 4 spaces)", cm, file)
		}
	}

	// The headless Service makes the SRV records the Caddyfiles look up.
	svc := docs["Service/shardcache"]
	sts := docs["StatefulSet/shardcache"]
	if svc.Spec.ClusterIP != "None" || !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("Service/shardcache: clusterIP %q, publishNotReadyAddresses %v; want None and true", svc.Spec.ClusterIP, svc.Spec.PublishNotReadyAddresses)
	}
	if sts.Spec.ServiceName != svc.Metadata.Name {
		t.Errorf("StatefulSet serviceName %q, want the headless Service %q (the SRV targets are <pod>.<serviceName>...)", sts.Spec.ServiceName, svc.Metadata.Name)
	}
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("StatefulSet replicas %v, want 3", sts.Spec.Replicas)
	}
	var san *k8sServicePort
	for i, p := range svc.Spec.Ports {
		if p.Protocol == "UDP" {
			san = &svc.Spec.Ports[i]
		}
	}
	if san == nil || san.Name == "" {
		t.Fatalf("Service/shardcache publishes no named UDP port: %+v", svc.Spec.Ports)
	}
	srvName := "_" + san.Name + "._udp." + svc.Metadata.Name + ".default.svc.cluster.local"
	for _, cm := range []string{"ConfigMap/shardcache-caddyfile", "ConfigMap/shardcache-director-caddyfile"} {
		cf := docs[cm].Data["Caddyfile"]
		if !strings.Contains(cf, "peers srv "+srvName+" {") {
			t.Errorf("%s does not look up %s", cm, srvName)
		}
		if !strings.Contains(cf, ":"+itoa(san.Port)+"\n") {
			t.Errorf("%s: the node's SAN port is not the Service's UDP port %d", cm, san.Port)
		}
	}

	// The pods: selectors match, the env the Caddyfiles read is set, the
	// Caddyfile is mounted where the command reads it.
	for _, key := range []string{"StatefulSet/shardcache", "Deployment/shardcache-director"} {
		d := docs[key]
		tpl := d.Spec.Template
		if tpl == nil || len(tpl.Spec.Containers) != 1 {
			t.Errorf("%s: want a pod template with one container", key)
			continue
		}
		var sel struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		}
		if err := d.Spec.Selector.Decode(&sel); err != nil || !subset(sel.MatchLabels, tpl.Metadata.Labels) || len(sel.MatchLabels) == 0 {
			t.Errorf("%s: selector %v does not select its pods' labels %v", key, sel.MatchLabels, tpl.Metadata.Labels)
		}
		c := tpl.Spec.Containers[0]
		env := map[string]string{}
		for _, e := range c.Env {
			switch {
			case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
				env[e.Name] = "field:" + e.ValueFrom.FieldRef.FieldPath
			case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
				env[e.Name] = "secret:" + e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
			default:
				env[e.Name] = e.Value
			}
		}
		for name, v := range map[string]string{
			"POD_NAME":          "field:metadata.name",
			"POD_IP":            "field:status.podIP",
			"SHARDCACHE_SECRET": "secret:shardcache-secret/SHARDCACHE_SECRET",
		} {
			if env[name] != v {
				t.Errorf("%s: env %s = %q, want %q", key, name, env[name], v)
			}
		}
		if _, ok := docs["Secret/shardcache-secret"].StringData["SHARDCACHE_SECRET"]; !ok {
			t.Errorf("Secret/shardcache-secret has no SHARDCACHE_SECRET")
		}
		if strings.Join(c.Args, " ") != "caddy run --config /etc/caddy/Caddyfile --adapter caddyfile" {
			t.Errorf("%s: args %q", key, c.Args)
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			for _, v := range tpl.Spec.Volumes {
				if v.Name == m.Name && m.MountPath == "/etc/caddy" && v.ConfigMap != nil {
					mounted = docs["ConfigMap/"+v.ConfigMap.Name].Kind == "ConfigMap"
				}
			}
		}
		if !mounted {
			t.Errorf("%s: no ConfigMap of this manifest mounted at /etc/caddy", key)
		}
		if len(tpl.Spec.InitContainers) != 1 || tpl.Spec.InitContainers[0].Name != "udp-buffers" {
			t.Errorf("%s: want the udp-buffers initContainer", key)
		}
	}
	// The content nodes' readiness probe is the one examples/dns/run.sh
	// runs against real nodes (its ready function).
	probe := sts.Spec.Template.Spec.Containers[0].ReadinessProbe
	if probe == nil || probe.Exec == nil || len(probe.Exec.Command) != 3 {
		t.Fatalf("StatefulSet: want an exec readiness probe (sh -c ...)")
	}
	runSh, err := os.ReadFile(filepath.Join(repoRoot, "examples", "dns", "run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	grep := probe.Exec.Command[2][strings.Index(probe.Exec.Command[2], "| grep"):]
	if !strings.Contains(string(runSh), grep) {
		t.Errorf("the readiness probe's test %q is not the one examples/dns/run.sh checks against running nodes", grep)
	}
	pdb := docs["PodDisruptionBudget/shardcache"]
	var pdbSel struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	if err := pdb.Spec.Selector.Decode(&pdbSel); err != nil || len(pdbSel.MatchLabels) == 0 || !subset(pdbSel.MatchLabels, sts.Spec.Template.Metadata.Labels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the StatefulSet's pods", pdbSel.MatchLabels)
	}
}

// TestExamplesK8sCaddyfile adapts and validates the Kubernetes Caddyfiles
// with a pod's environment: {$POD_NAME} and {$POD_IP} become the node's
// name, SAN and lan addresses at adapt time, the secret stays a runtime
// placeholder; without that environment the config is refused.
func TestExamplesK8sCaddyfile(t *testing.T) {
	needCaddy(t)
	secret := newClusterSecret(t)
	podEnv := []string{"POD_NAME=shardcache-1", "POD_IP=10.1.2.3", clusterSecretEnv + "=" + secret}
	dir := t.TempDir()
	for _, name := range []string{"Caddyfile", "director.Caddyfile"} {
		raw, err := os.ReadFile(filepath.Join(repoRoot, "examples", "kubernetes", name))
		if err != nil {
			t.Fatal(err)
		}
		// The content root of the pods is /srv/www: validate with one that
		// exists here.
		cf := strings.ReplaceAll(string(raw), "root /srv/www", "root "+filepath.Join(repoRoot, "examples", "single", "site"))
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
			t.Fatal(err)
		}
		out, stderr, err := runCaddyEnv(t, 30*time.Second, podEnv, "adapt", "--config", path, "--adapter", "caddyfile")
		if err != nil {
			t.Fatalf("adapt %s: %v\n%s", name, err, stderr)
		}
		if strings.Contains(out, secret) {
			t.Errorf("adapt %s: the secret's value is in the JSON", name)
		}
		var cfg struct {
			Apps struct {
				Shardcache struct {
					Node *struct {
						Name    string `json:"name"`
						Address string `json:"address"`
					} `json:"node"`
					PeerSources []struct {
						Kind string `json:"kind"`
						Name string `json:"name"`
					} `json:"peer_sources"`
					Secret string `json:"secret"`
					Lan    string `json:"lan"`
				} `json:"shardcache"`
			} `json:"apps"`
		}
		if err := json.Unmarshal([]byte(out), &cfg); err != nil {
			t.Fatal(err)
		}
		sc := cfg.Apps.Shardcache
		wantLan := "10.1.2.3:8080"
		if name == "director.Caddyfile" {
			wantLan = ""
		}
		if sc.Node == nil || sc.Node.Name != "shardcache-1" || sc.Node.Address != "10.1.2.3:7946" ||
			sc.Lan != wantLan || sc.Secret != "{env."+clusterSecretEnv+"}" || len(sc.PeerSources) != 1 || sc.PeerSources[0].Kind != "srv" {
			t.Errorf("adapt %s in a pod: %+v (node %+v)", name, sc, sc.Node)
		}
		if _, stderr, err := runCaddyEnv(t, 30*time.Second, podEnv, "validate", "--config", path, "--adapter", "caddyfile"); err != nil {
			t.Errorf("validate %s with a pod's environment: %v\n%s", name, err, stderr)
		}
		// Outside a pod: refused, naming the missing variable.
		_, stderr, err = runCaddyEnv(t, 30*time.Second, []string{clusterSecretEnv + "=" + secret}, "validate", "--config", path, "--adapter", "caddyfile")
		if err == nil || !strings.Contains(stderr, "POD_NAME_unset") {
			t.Errorf("validate %s without POD_NAME: err %v, want a refusal naming POD_NAME_unset:\n%s", name, err, stderr)
		}
	}
}

func subset(sub, of map[string]string) bool {
	for k, v := range sub {
		if of[k] != v {
			return false
		}
	}
	return true
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
