// Package fmix is MurmurHash3's 64-bit finaliser, which the schedulers
// (sh, mh) and the persistence table use to spread addresses: every bit of
// the input moves every bit of the output, so neighbouring client
// addresses land far apart.
package fmix
