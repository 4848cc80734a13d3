package config

import "testing"

// Which director services the kernel template map serves: persistent ones
// whose flows the queue need not see each.
func TestKernelTemplates(t *testing.T) {
	for _, c := range []struct {
		name, file, extra string
		want              bool
	}{
		{"persistent director service", "mode: director\n", "", true},
		{"socket proxy", "mode: proxy\n", "", false},
		{"turned off", "mode: director\ndirector: {kernel_templates: false}\n", "", false},
		{"allow list (rules ahead of the map)", "mode: director\n", "    allow: [198.18.0.0/16]\n", true},
		{"client limit", "mode: director\n", "    persistence: {max_client_connections: 2}\n", false},
		{"connection limit", "mode: director\n", "    limits: {max_connections: 100}\n", false},
		{"quorum", "mode: director\n", "    quorum: 1\n", false},
	} {
		persistence := "    persistence: {}\n"
		if c.name == "client limit" {
			persistence = ""
		}
		f, err := Parse("test", []byte(c.file+"services:\n  - name: web\n    listen: 198.18.0.10:80\n"+persistence+c.extra+"    servers: [{address: 198.18.1.1:80}]\n"))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := f.KernelTemplates(f.Services[0]); got != c.want {
			t.Errorf("%s: KernelTemplates %v, want %v", c.name, got, c.want)
		}
	}
}
