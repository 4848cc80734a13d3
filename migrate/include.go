package migrate

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/tetherlb/tether/internal/bounded"
)

// Bounds on what include may pull in: keepalived has none, but an import
// reads what a user points it at and must end.
const (
	maxIncludeDepth = 8
	maxIncludeFiles = 256
	maxIncludeSize  = 4 << 20
)

// fileShift puts a file's index above its line numbers in a block's
// position, so that one int says file and line and sorts by both.
const fileShift = 24

// KeepalivedFile imports keepalived.conf from path, following include
// (and includer/includem/includew/includeb) as keepalived does: a glob,
// relative to the directory of the file that includes it. Notes name the
// file and line of what they speak of. mangle is as for Keepalived.
func KeepalivedFile(path string, mangle io.Reader) (*Result, error) {
	r := &Result{}
	blocks, err := r.includeFile(path, 0)
	if err != nil {
		return nil, err
	}
	return r.keepalived(blocks, mangle)
}

// includeFile parses one file and splices in the blocks of the files it
// includes, at the place of each include statement.
func (r *Result) includeFile(path string, depth int) ([]*block, error) {
	if len(r.files) >= maxIncludeFiles {
		return nil, fmt.Errorf("%s: more than %d files included", path, maxIncludeFiles)
	}
	b, err := bounded.ReadFile(path, maxIncludeSize)
	if err != nil {
		return nil, err
	}
	idx := len(r.files)
	r.files = append(r.files, path)
	blocks, err := parseKeepalived(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	renumber(blocks, idx<<fileShift)
	return r.expand(blocks, filepath.Dir(path), depth)
}

// expand replaces include statements, at any depth of blocks, with what
// their files hold.
func (r *Result) expand(blocks []*block, dir string, depth int) ([]*block, error) {
	var out []*block
	for _, b := range blocks {
		switch b.name() {
		case "include", "includer", "includem", "includew", "includeb":
		default:
			kids, err := r.expand(b.kids, dir, depth)
			if err != nil {
				return nil, err
			}
			b.kids = kids
			out = append(out, b)
			continue
		}
		if depth >= maxIncludeDepth {
			return nil, fmt.Errorf("%s: includes nested more than %d deep", r.place(b.line), maxIncludeDepth)
		}
		pattern := b.arg(1)
		if pattern == "" {
			r.unreadable(b.line, "%s without a file name", b.name())
			continue
		}
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(dir, pattern)
		}
		if strings.ContainsAny(pattern, "{}") {
			r.note(b.line, "%s %s: brace expressions are taken literally", b.name(), b.arg(1))
		}
		paths, err := filepath.Glob(pattern)
		if err != nil {
			r.unreadable(b.line, "%s %s: %v", b.name(), b.arg(1), err)
			continue
		}
		if len(paths) == 0 {
			r.note(b.line, "%s %s: no file matches", b.name(), b.arg(1))
		}
		for _, p := range paths { // Glob sorts them, as glob(3) does
			kids, err := r.includeFile(p, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, kids...)
		}
	}
	return out, nil
}

func renumber(blocks []*block, base int) {
	for _, b := range blocks {
		b.line += base
		renumber(b.kids, base)
	}
}

// place is a block position as "file:line".
func (r *Result) place(pos int) string {
	return fmt.Sprintf("%s:%d", r.files[pos>>fileShift], pos&(1<<fileShift-1))
}
