package migrate

import (
	"strconv"
	"strings"
	"testing"
)

// virtual_server_group: a "virtual_server group NAME" block becomes one
// service per member (an address range spelt out, a fwmark member a mark
// service), each with the block's settings and real servers; the group may
// come after its use, as keepalived reads the whole file first.
func TestKeepalivedVirtualServerGroup(t *testing.T) {
	in := `virtual_server group web {
  lb_algo sh
  persistence_timeout 600
  real_server 198.19.0.1 80 {
  }
}
virtual_server group nope {
}
virtual_server_group web {
  198.18.0.10-12 80
  2001:2::a-b 443
  fwmark 7
  198.18.0.300 80
}
`
	r, err := Keepalived(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range r.Config.Services {
		if s.Scheduler != "sh" || s.Persistence == nil || s.Persistence.Timeout.D().Seconds() != 600 || len(s.Servers) != 1 {
			t.Errorf("%s lacks the block's settings: %+v", s.Name, s)
		}
		if s.Fwmark != 0 {
			got = append(got, "fwmark "+strconv.Itoa(int(s.Fwmark)))
		} else {
			got = append(got, s.Listen)
		}
	}
	want := "198.18.0.10:80 198.18.0.11:80 198.18.0.12:80 [2001:2::a]:443 [2001:2::b]:443 fwmark 7"
	if strings.Join(got, " ") != want {
		t.Errorf("services %v, want %s", got, want)
	}
	all := notes(r)
	for _, w := range []string{
		"line 1: virtual_server group web: 6 services, one per member",
		"line 7: virtual_server group nope: no virtual_server_group of that name",
		`line 13: virtual_server_group web: "198.18.0.300" is not an address`,
	} {
		if !strings.Contains(all, w) {
			t.Errorf("notes lack %q:\n%s", w, all)
		}
	}
}
