// Package config reads tether's YAML configuration file strictly: an
// unknown key, a wrong type or a bad value is an error that names the file,
// the line and the key, and the whole file is validated before anything
// uses it. Normalize fills in every default, so `tether check` can print
// what will run.
package config
