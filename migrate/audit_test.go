package migrate

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/tetherlb/tether/config"
)

// Every construct of keepalived.conf(5) that describes virtual servers
// (keepalived 2.2: a virtual_server's keywords, a real_server's, and its
// checkers') either imports, which the test sees in the config, or is
// reported with its line. Each construct is alone on line 2 (virtual
// server), 3 (real server) or 4 (checker) of a small file.
func TestKeepalivedEveryConstruct(t *testing.T) {
	type imported func(s config.Service) bool
	web := func(s config.Service) bool { return true }
	vs := map[string]imported{
		"delay_loop 3":                          web, // applied to the checks: seen in the checker cases
		"lb_algo sh":                            func(s config.Service) bool { return s.Scheduler == "sh" },
		"lvs_sched mh":                          func(s config.Service) bool { return s.Scheduler == "mh" },
		"lb_kind NAT":                           func(s config.Service) bool { return s.Mode == config.ModeDirector },
		"lvs_method NAT":                        func(s config.Service) bool { return s.Mode == config.ModeDirector },
		"persistence_timeout 600":               func(s config.Service) bool { return s.Persistence != nil && s.Persistence.Timeout.D().Seconds() == 600 },
		"persistence_granularity 255.255.255.0": func(s config.Service) bool { return s.Persistence != nil && s.Persistence.Netmask == "255.255.255.0" },
		"protocol UDP":                          func(s config.Service) bool { return s.Protocol == "udp" },
		"sorry_server 198.19.0.99 80":           func(s config.Service) bool { return s.SorryServer == "198.19.0.99:80" },
		"quorum 1":                              func(s config.Service) bool { return s.Quorum == 1 },
		"quorum_up /bin/up":                     func(s config.Service) bool { return slices.Equal(s.QuorumUp, []string{"/bin/up"}) },
		"quorum_down /bin/down":                 func(s config.Service) bool { return slices.Equal(s.QuorumDown, []string{"/bin/down"}) },
		"alpha":                                 web, // applied to the checks
		"inhibit_on_failure":                    func(s config.Service) bool { return s.InhibitOnFailure },
		"ops":                                   nil, // TCP here: reported
		"lb_kind DR":                            nil,
		"lb_kind TUN":                           nil,
		"ip_family inet":                        nil,
		"hashed":                                nil,
		"flag-1":                                nil,
		"flag-2":                                nil,
		"flag-3":                                nil,
		"sh-port":                               nil,
		"sh-fallback":                           nil,
		"mh-port":                               nil,
		"mh-fallback":                           nil,
		"persistence_engine sip":                nil,
		"ha_suspend":                            nil,
		"smtp_alert":                            nil,
		"virtualhost www.example.com":           nil,
		"omega":                                 nil,
		"hysteresis 1":                          nil,
		"sorry_server_inhibit":                  nil,
		"sorry_server_lvs_method DR":            nil,
		"connect_timeout 3":                     nil,
		"retry 2":                               nil,
		"delay_before_retry 2":                  nil,
		"warmup 3":                              nil,
		"protocol SCTP":                         nil,
	}
	rs := map[string]func(sv config.Server) bool{
		"weight 7":             func(sv config.Server) bool { return *sv.Weight == 7 },
		"uthreshold 100":       func(sv config.Server) bool { return sv.MaxConnections == 100 },
		"inhibit_on_failure":   func(config.Server) bool { return true }, // per service: seen above
		"notify_up /bin/up":    nil,
		"notify_down /bin/dn":  nil,
		"smtp_alert":           nil,
		"lvs_method DR":        nil,
		"virtualhost a.test":   nil,
		"connect_timeout 3":    nil,
		"retry 2":              nil,
		"delay_before_retry 2": nil,
		"warmup 3":             nil,
		"delay_loop 3":         nil,
		"BFD_CHECK { }":        nil,
		"FILE_CHECK { }":       nil,
		"PING_CHECK { }":       nil,
	}
	load := func(t *testing.T, conf string) (*config.File, string) {
		t.Helper()
		r, err := Keepalived(strings.NewReader(conf), nil)
		if err != nil {
			t.Fatalf("%v\n%s", err, conf)
		}
		out, err := r.YAML("keepalived")
		if err != nil {
			t.Fatal(err)
		}
		f, err := config.Parse("keepalived.yaml", out)
		if err != nil {
			t.Fatalf("the import does not pass check: %v\n%s", err, out)
		}
		return f, notes(r)
	}
	for line, ok := range vs {
		t.Run("virtual_server/"+line, func(t *testing.T) {
			f, n := load(t, "virtual_server 198.18.0.10 80 {\n    "+line+"\n    real_server 198.19.0.11 80 {\n    }\n}\n")
			keyword := strings.Fields(line)[0]
			if f := strings.Fields(line); f[0] == "lb_kind" { // the note names the method: "DR forwarding is not supported"
				keyword = f[1]
			}
			switch {
			case ok == nil && !strings.Contains(n, "line 2: ") || ok == nil && !strings.Contains(n, keyword):
				t.Errorf("not imported, and not reported on line 2 naming %s:\n%s", keyword, n)
			case ok != nil && (len(f.Services) != 1 || !ok(f.Services[0])):
				t.Errorf("not imported: %+v\n%s", f.Services, n)
			case ok != nil && strings.Contains(n, "line 2: "):
				t.Errorf("imported, but reported too:\n%s", n)
			}
		})
	}
	for line, ok := range rs {
		t.Run("real_server/"+line, func(t *testing.T) {
			f, n := load(t, "virtual_server 198.18.0.10 80 {\n    real_server 198.19.0.11 80 {\n        "+line+"\n    }\n}\n")
			keyword := strings.ToLower(strings.Fields(line)[0])
			switch {
			case ok == nil && (!strings.Contains(n, "line 3: ") || !strings.Contains(strings.ToLower(n), keyword)):
				t.Errorf("not imported, and not reported on line 3 naming %s:\n%s", keyword, n)
			case ok != nil && (len(f.Services) != 1 || !ok(f.Services[0].Servers[0])):
				t.Errorf("not imported: %+v\n%s", f.Services, n)
			case ok != nil && strings.Contains(n, "line 3: "):
				t.Errorf("imported, but reported too:\n%s", n)
			}
		})
	}
	// The checkers, each with every keyword keepalived.conf(5) gives it.
	checks := map[string][]string{
		"TCP_CHECK":  {"connect_ip 198.19.0.11", "connect_port 80", "bindto 198.19.0.1", "bind_port 4000", "connect_timeout 3", "retry 2", "delay_before_retry 2", "warmup 3"},
		"HTTP_GET":   {"url { path /healthz }", "url { path / status_code 200 }", "url { path / digest 0123456789abcdef0123456789abcdef }", "url { path / virtualhost a.test }", "virtualhost a.test", "connect_timeout 3", "nb_get_retry 2"},
		"SSL_GET":    {"url { path / }", "enable_sni", "connect_timeout 3"},
		"SMTP_CHECK": {"helo_name tether.test", "connect_timeout 3"},
		"DNS_CHECK":  {"type A", "name example.test", "connect_timeout 3"},
		"UDP_CHECK":  {"payload ping", "require_reply", "connect_timeout 3"},
		"MISC_CHECK": {"misc_path \"/bin/true\"", "misc_timeout 3", "misc_dynamic", "user nobody"},
	}
	for checker, keys := range checks {
		for _, line := range keys {
			t.Run(checker+"/"+line, func(t *testing.T) {
				conf := fmt.Sprintf("virtual_server 198.18.0.10 80 {\n    real_server 198.19.0.11 80 {\n        %s {\n            %s\n        }\n    }\n}\n", checker, line)
				if checker == "MISC_CHECK" && !strings.HasPrefix(line, "misc_path") {
					conf = strings.Replace(conf, line, line+"\n            misc_path /bin/true", 1)
				}
				f, n := load(t, conf)
				hc := f.Services[0].Servers[0].HealthCheck
				if hc == nil {
					t.Fatalf("the check was left out:\n%s", n)
				}
				// Imported (no note on its line) or reported with its line.
				if strings.Contains(n, "line 4: ") && !strings.Contains(strings.ToLower(n), strings.Fields(line)[0]) {
					t.Errorf("reported on line 4 without naming %s:\n%s", strings.Fields(line)[0], n)
				}
			})
		}
	}
}

// Every option of ipvsadm(8) that `ipvsadm -S` writes for a virtual
// service (-A) or a real server (-a) imports, which the test sees in the
// config, or is reported with its line (line 1 for -A, 2 for -a).
func TestIPVSAdmEveryOption(t *testing.T) {
	svc := map[string]func(s config.Service) bool{
		"-t 198.18.0.10:80 -s sh":                        func(s config.Service) bool { return s.Listen == "198.18.0.10:80" && s.Scheduler == "sh" },
		"-u 198.18.0.10:53 -s rr":                        func(s config.Service) bool { return s.Protocol == "udp" },
		"-t 198.18.0.10:80 -s rr -p 600":                 func(s config.Service) bool { return s.Persistence != nil && s.Persistence.Timeout.D().Seconds() == 600 },
		"-t 198.18.0.10:80 -s rr -p":                     func(s config.Service) bool { return s.Persistence != nil },
		"-t 198.18.0.10:80 -s rr -p 60 -M 255.255.255.0": func(s config.Service) bool { return s.Persistence != nil && s.Persistence.Netmask == "255.255.255.0" },
		"-u 198.18.0.10:53 -s rr -o":                     func(s config.Service) bool { return s.OnePacket },
		"-t 198.18.0.10:80 -s wlc -b sh-port":            nil,
		"-t 198.18.0.10:80 -s rr -p 60 --pe sip":         nil,
		"-t 198.18.0.10:80 -s lblc":                      nil,
	}
	for line, ok := range svc {
		t.Run("-A "+line, func(t *testing.T) {
			proto := strings.Fields(line)[0]
			in := "-A " + line + "\n-a " + proto + " " + strings.Fields(line)[1] + " -r 198.19.0.11:" + strings.Split(strings.Fields(line)[1], ":")[1] + " -m -w 1\n"
			f, n := importIPVSAdm(t, in)
			switch {
			case ok == nil && !strings.Contains(n, "line 1: "):
				t.Errorf("not imported, and not reported on line 1:\n%s", n)
			case ok != nil && (len(f.Services) != 1 || !ok(f.Services[0])):
				t.Errorf("not imported: %+v\n%s", f.Services, n)
			}
		})
	}
	srv := map[string]func(sv config.Server, s config.Service) bool{
		"-m -w 3": func(sv config.Server, s config.Service) bool { return *sv.Weight == 3 && s.Mode == config.ModeDirector },
		"-m -w 1 -x 100 -y 50": func(sv config.Server, _ config.Service) bool {
			return sv.MaxConnections == 100 && sv.ResumeConnections == 50
		},
		"-g -w 1":                                nil,
		"-i -w 1":                                nil,
		"-i -w 1 --tun-type gue --tun-port 6080": nil,
	}
	for opts, ok := range srv {
		t.Run("-a "+opts, func(t *testing.T) {
			in := "-A -t 198.18.0.10:80 -s rr\n-a -t 198.18.0.10:80 -r 198.19.0.11:80 " + opts + "\n"
			f, n := importIPVSAdm(t, in)
			switch {
			case ok == nil && !strings.Contains(n, "line 2: ") && !strings.Contains(n, "line 1: "):
				t.Errorf("not imported, and not reported:\n%s", n)
			case ok != nil && (len(f.Services) != 1 || !ok(f.Services[0].Servers[0], f.Services[0])):
				t.Errorf("not imported: %+v\n%s", f.Services, n)
			}
		})
	}
}

// importIPVSAdm imports in and loads the result as tether check does.
func importIPVSAdm(t *testing.T, in string) (*config.File, string) {
	t.Helper()
	r, err := IPVSAdm(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	return roundTrip(t, r, "ipvsadm"), notes(r)
}
