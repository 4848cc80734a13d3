// Package fmix is MurmurHash3's 64-bit finaliser, which the schedulers
// (sh, mh) and the persistence table use to spread addresses: every bit of
// the input moves every bit of the output, so neighbouring client
// addresses land far apart.
package fmix

// Mix64 is fmix64 of MurmurHash3.
func Mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
