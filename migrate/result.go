package migrate

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/sched"
)

// Note is something of the input that was not taken as it stands.
type Note struct {
	File string // the included file the line is in; "" for the input itself
	Line int    // 0: not tied to one line
	Msg  string
	// Unreadable: the line was not understood at all and is left out.
	Unreadable bool

	pos int // the block position: file and line, for sorting
}

func (n Note) String() string {
	if n.Line == 0 {
		return n.Msg
	}
	if n.File != "" {
		return fmt.Sprintf("%s:%d: %s", n.File, n.Line, n.Msg)
	}
	return fmt.Sprintf("line %d: %s", n.Line, n.Msg)
}

// Result is an imported configuration and what the import says of it.
type Result struct {
	res      Resolver        // names in the input: hosts and services
	resolved map[string]bool // the names noted already, once each
	Config   *config.File
	Notes    []Note
	lines    []int    // the line (block position) of each service of Config
	files    []string // the files read, by index; none for one reader
}

func (r *Result) note(pos int, format string, a ...any) {
	r.Notes = append(r.Notes, r.at(pos, Note{Msg: fmt.Sprintf(format, a...)}))
}

func (r *Result) unreadable(pos int, format string, a ...any) {
	r.Notes = append(r.Notes, r.at(pos, Note{Msg: fmt.Sprintf(format, a...), Unreadable: true}))
}

// at places n at a block position: a line, or with included files a file
// and a line.
func (r *Result) at(pos int, n Note) Note {
	n.pos, n.Line = pos, pos
	if f := pos >> fileShift; f > 0 { // the first file is the input itself
		n.File, n.Line = r.files[f], pos&(1<<fileShift-1)
	}
	return n
}

// sortNotes puts the notes in file and line order, the ones of no line
// first.
func (r *Result) sortNotes() {
	slices.SortStableFunc(r.Notes, func(a, b Note) int { return a.pos - b.pos })
}

// Unreadable reports whether some input was not understood at all.
func (r *Result) Unreadable() bool {
	for _, n := range r.Notes {
		if n.Unreadable {
			return true
		}
	}
	return false
}

// YAML renders the imported configuration, with the notes as a comment
// on top so that they travel with the file.
func (r *Result) YAML(source string) ([]byte, error) {
	out, err := r.Config.Marshal()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# imported by tether from %s\n", source)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "# NOTE %s\n", printable(n.String()))
	}
	b.Write(out)
	return []byte(b.String()), nil
}

// serviceName names an imported service after its address or mark, as
// ipvsadm identifies it; protocol "" is tcp.
func serviceName(proto config.Protocol, listen string, mark uint32) string {
	if mark != 0 {
		return "fwmark-" + strconv.FormatUint(uint64(mark), 10)
	}
	if proto == "" {
		proto = "tcp"
	}
	r := strings.NewReplacer("[", "", "]", "", ":", "-", ".", "-")
	return string(proto) + "-" + r.Replace(listen)
}

// modeFor maps an IPVS forwarding method to a tether data path: NAT is
// what the director does; DR and TUN have no tether equivalent, so they
// become the director too, with a warning.
func (r *Result) modeFor(line int, method, service string) config.Mode {
	switch method {
	case "dr", "tun":
		r.note(line, "%s: %s forwarding is not supported (tether does not route to servers that answer clients directly); mapped to director mode (NAT): the servers must route replies back through tether, or set director.masquerade", service, strings.ToUpper(method))
	}
	return config.ModeDirector
}

// ipvsScheduler maps a scheduler name; IPVS's that tether lacks are noted
// and replaced by wlc.
func (r *Result) ipvsScheduler(line int, s, service string) sched.Name {
	if n := sched.Name(s); n.Valid() {
		return n
	}
	names := make([]string, len(sched.Names))
	for i, n := range sched.Names {
		names[i] = string(n)
	}
	r.note(line, "%s: scheduler %q is not one of tether's (%s); using %s", service, s, strings.Join(names, ", "), sched.Default)
	return sched.Default
}

// printable makes a note safe in a YAML comment: the input it quotes may
// hold any bytes.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}

// portZero says a service listens on every port of its VIP (VIP:0, a
// persistent port-0 service): its servers keep the client's port.
func portZero(listen string) bool {
	ap, err := netip.ParseAddrPort(listen)
	return err == nil && ap.Port() == 0
}
