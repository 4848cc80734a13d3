package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/tetherlb/tether/config"
	"go.yaml.in/yaml/v3"
)

// manifest is the part of a Kubernetes object these tests read.
type manifest struct {
	Kind string            `yaml:"kind"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				HostNetwork bool        `yaml:"hostNetwork"`
				Containers  []container `yaml:"containers"`
				Volumes     []struct {
					Name string `yaml:"name"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type container struct {
	Name            string   `yaml:"name"`
	Args            []string `yaml:"args"`
	SecurityContext struct {
		ReadOnlyRootFilesystem bool `yaml:"readOnlyRootFilesystem"`
		Capabilities           struct {
			Drop []string `yaml:"drop"`
			Add  []string `yaml:"add"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	LivenessProbe  probe `yaml:"livenessProbe"`
	ReadinessProbe probe `yaml:"readinessProbe"`
	VolumeMounts   []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
	} `yaml:"httpGet"`
}

// The Kubernetes examples parse, their tether configs pass tether check,
// and the tether container gets what tether relies on and no more: the
// config mounted where the args say, a writable /run/tether for the admin
// socket, the probes on /healthz and /readyz, every capability dropped and
// only the data path's added back.
func TestKubernetesManifests(t *testing.T) {
	for file, caps := range map[string][]string{
		"sidecar.yaml":            {"NET_BIND_SERVICE"},
		"director-daemonset.yaml": {"NET_ADMIN"},
	} {
		t.Run(file, func(t *testing.T) {
			b, err := os.ReadFile("../../deploy/kubernetes/" + file)
			if err != nil {
				t.Fatal(err)
			}
			dec := yaml.NewDecoder(bytes.NewReader(b))
			var configs, workloads int
			for {
				var m manifest
				if err := dec.Decode(&m); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				switch m.Kind {
				case "ConfigMap":
					if _, err := config.Parse(file, []byte(m.Data["tether.yaml"])); err != nil {
						t.Errorf("the ConfigMap's tether.yaml: %v", err)
					}
					if !strings.Contains(m.Data["tether.yaml"], "/run/tether/admin.sock") {
						t.Errorf("the config does not put the admin socket in /run/tether")
					}
					configs++
				case "Deployment", "DaemonSet":
					workloads++
					i := slices.IndexFunc(m.Spec.Template.Spec.Containers, func(c container) bool { return c.Name == "tether" })
					if i < 0 {
						t.Fatal("no tether container")
					}
					c := m.Spec.Template.Spec.Containers[i]
					if !slices.Equal(c.Args[:3], []string{"run", "--config", "/etc/tether/tether.yaml"}) {
						t.Errorf("args %v", c.Args)
					}
					mounts := map[string]bool{}
					for _, v := range c.VolumeMounts {
						mounts[v.MountPath] = true
					}
					if !mounts["/etc/tether"] || !mounts["/run/tether"] {
						t.Errorf("mounts %v: want /etc/tether and /run/tether", mounts)
					}
					if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
						t.Errorf("probes %+v %+v", c.LivenessProbe, c.ReadinessProbe)
					}
					sc := c.SecurityContext
					if !sc.ReadOnlyRootFilesystem || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) || !slices.Equal(sc.Capabilities.Add, caps) {
						t.Errorf("security context %+v: want a read-only root, ALL dropped, %v added", sc, caps)
					}
					if m.Kind == "DaemonSet" && !m.Spec.Template.Spec.HostNetwork {
						t.Error("the director runs in the host's network namespace")
					}
				}
			}
			if configs != 1 || workloads != 1 {
				t.Errorf("%d ConfigMaps and %d workloads, want 1 each", configs, workloads)
			}
		})
	}
}
