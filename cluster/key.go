package cluster

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// ReadKeyFile reads a gossip key: the base64 of 16, 24 or 32 bytes (as
// `head -c 32 /dev/urandom | base64` writes). A file that group or others
// may read is refused: the key is the cluster's only secret.
func ReadKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if m := st.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("%s: readable or writable by group or others (mode %#o); chmod 600 it", path, m)
	}
	b := make([]byte, 256)
	n, err := f.Read(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	text := strings.TrimSpace(string(b[:n]))
	key, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("%s: not base64 (%v)", path, err)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("%s: a key of %d bytes (want 16, 24 or 32)", path, len(key))
}
