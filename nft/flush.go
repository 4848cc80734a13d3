package nft

import (
	"github.com/google/nftables"
)

// Flush removes tether's table from the calling thread's network
// namespace, and reports whether there was one.
func Flush() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, err
	}
	for _, t := range tables {
		if t.Name == TableName {
			c.DelTable(t)
			return true, c.Flush()
		}
	}
	return false, nil
}
