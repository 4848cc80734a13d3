package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// FTPOptions configure a vsftpd server on a host.
type FTPOptions struct {
	// PasvAddress is the address the server announces for passive data
	// connections: the VIP when clients reach it through a load balancer.
	// Zero: the host's own address.
	PasvAddress netip.Addr
	// PasvMinPort and PasvMaxPort bound the passive ports; default
	// 30000-30099.
	PasvMinPort, PasvMaxPort int
	// Files are served from the anonymous root: name -> content.
	Files map[string][]byte
	// IPv6: listen on both families (clients of the IPv6 VIP use EPSV,
	// which names no address).
	IPv6 bool
}

// StartFTP runs vsftpd (Debian's package) on port 21 of the host, with
// anonymous read-only access in passive mode. The Env stops it.
func (h *Host) StartFTP(o FTPOptions) error {
	bin, err := exec.LookPath("vsftpd")
	if err != nil {
		return errors.New("testenv: vsftpd is not installed (apt-get install vsftpd)")
	}
	if o.PasvMinPort == 0 {
		o.PasvMinPort, o.PasvMaxPort = 30000, 30099
	}
	if !o.PasvAddress.IsValid() {
		o.PasvAddress = h.Addrs[0]
	}
	dir, err := os.MkdirTemp("", "testenv-ftp-"+h.Name+"-")
	if err != nil {
		return err
	}
	h.env.removeWith(dir)
	root, empty := filepath.Join(dir, "root"), filepath.Join(dir, "empty")
	for _, d := range []string{root, empty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	for name, b := range o.Files {
		if err := os.WriteFile(filepath.Join(root, name), b, 0o644); err != nil {
			return err
		}
	}
	// vsftpd refuses a writable chroot for anonymous users.
	if err := os.Chmod(root, 0o555); err != nil {
		return err
	}
	conf := filepath.Join(dir, "vsftpd.conf")
	listen, listen6, probe := "YES", "NO", "127.0.0.1:21"
	if o.IPv6 {
		listen, listen6, probe = "NO", "YES", "[::1]:21"
	}
	err = os.WriteFile(conf, []byte(fmt.Sprintf(`listen=%s
listen_ipv6=%s
listen_port=21
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=%s
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_address=%s
pasv_addr_resolve=NO
pasv_min_port=%d
pasv_max_port=%d
seccomp_sandbox=NO
secure_chroot_dir=%s
xferlog_enable=NO
`, listen, listen6, root, o.PasvAddress, o.PasvMinPort, o.PasvMaxPort, empty)), 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, conf)
	if err := h.Start(cmd); err != nil {
		return err
	}
	// Ready when port 21 answers inside the host.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var c net.Conn
		if h.Do(func() (err error) { c, err = net.Dial("tcp", probe); return }) == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("testenv: vsftpd on %s did not listen on port 21 within 5 s", h.Name)
}

// removeWith removes path when the Env closes.
func (e *Env) removeWith(path string) {
	e.mu.Lock()
	e.paths = append(e.paths, path)
	e.mu.Unlock()
}
