package bounded

import (
	"fmt"
	"io"
	"os"
)

// Open opens the regular file at path for reading, refusing anything else
// and anything larger than max bytes. It returns the file and its size.
func Open(path string, max int64) (*os.File, int64, error) {
	// O_NONBLOCK: opening a FIFO with no writer would block otherwise.
	f, err := os.OpenFile(path, os.O_RDONLY|nonblock, 0)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is %s, not a regular file", path, kind(st.Mode()))
	}
	if st.Size() > max {
		f.Close()
		return nil, 0, fmt.Errorf("%s is %d bytes, more than the %d this file may have", path, st.Size(), max)
	}
	return f, st.Size(), nil
}

// ReadFile reads the regular file at path, of at most max bytes (also if
// it grows while being read).
func ReadFile(path string, max int64) ([]byte, error) {
	f, size, err := Open(path, max)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 0, size+1)
	b, err = readAll(io.LimitReader(f, max+1), b)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s grew past %d bytes while being read", path, max)
	}
	return b, nil
}

func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	}
	return "not a regular file"
}
