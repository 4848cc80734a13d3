package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/tetherlb/tether/internal/bounded"
	"go.yaml.in/yaml/v3"
)

// MaxFileSize bounds a configuration file: checked before it is read, so
// that a wrong path (a FIFO, /dev/zero, a log file) cannot block tether or
// take its memory. A file of ten thousand servers is under 1 MiB.
const MaxFileSize = 4 << 20

// maxNodes bounds the YAML nodes of a file with its aliases expanded, and
// maxDepth their nesting: an alias bomb or a deep nest is refused before
// it is decoded.
const (
	maxNodes = 200_000
	maxDepth = 32
)

// Load reads, validates and normalizes the file at path.
func Load(path string) (*File, error) {
	b, err := bounded.ReadFile(path, MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, b)
}

// Parse validates and normalizes a configuration; name is used in errors.
func Parse(name string, b []byte) (*File, error) {
	if len(b) > MaxFileSize {
		return nil, Errors{{File: name, Msg: fmt.Sprintf("%d bytes, more than a configuration may have (%d)", len(b), MaxFileSize)}}
	}
	docs := yaml.NewDecoder(bytes.NewReader(b))
	var root, second yaml.Node
	if err := docs.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlErrors(name, err)
	}
	if err := docs.Decode(&second); err == nil {
		return nil, Errors{{File: name, Line: second.Line, Msg: "a second YAML document: tether reads one (remove the --- and what follows, or merge them)"}}
	}
	if e := checkSize(name, &root); e != nil {
		return nil, Errors{e}
	}
	f := &File{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlErrors(name, err)
	}
	v := validator{file: name, lines: map[string]int{}}
	v.index(&root, "")
	v.check(f)
	if len(v.errs) > 0 {
		return nil, v.errs
	}
	f.normalize()
	return f, nil
}

// Marshal renders the normalized file as YAML.
func (f *File) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// checkSize refuses a document whose aliases expand past maxNodes nodes or
// whose nesting passes maxDepth: yaml.v3 would expand every alias while
// decoding.
func checkSize(name string, root *yaml.Node) *Error {
	var walk func(n *yaml.Node, depth int) (int, *yaml.Node)
	sizes := map[*yaml.Node]int{} // an anchor's expanded size, counted once
	walk = func(n *yaml.Node, depth int) (int, *yaml.Node) {
		if depth > maxDepth {
			return maxNodes + 1, n
		}
		if n.Kind == yaml.AliasNode {
			if s, ok := sizes[n.Alias]; ok {
				return s, nil
			}
			n = n.Alias
		}
		total := 1
		for _, c := range n.Content {
			s, deep := walk(c, depth+1)
			if deep != nil {
				return s, deep
			}
			if total += s; total > maxNodes {
				return total, nil
			}
		}
		sizes[n] = total
		return total, nil
	}
	total, deep := walk(root, 0)
	switch {
	case deep != nil:
		return &Error{File: name, Line: deep.Line, Msg: fmt.Sprintf("nested more than %d levels deep", maxDepth)}
	case total > maxNodes:
		return &Error{File: name, Msg: fmt.Sprintf("more than %d values with its aliases expanded (an alias bomb?)", maxNodes)}
	}
	return nil
}
