package nft

import (
	"github.com/google/nftables"
)

// Flush removes every table of tether's from the calling thread's network
// namespace: inet tether (marks), ip/ip6 tether (director) and the NAT
// anchors. It returns the tables it removed, as "family name".
func Flush() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTables()
	if err != nil {
		return nil, err
	}
	fams := map[nftables.TableFamily]string{nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6"}
	var removed []string
	for _, t := range tables {
		fam, ok := fams[t.Family]
		if ok && (t.Name == TableName || t.Name == UpgradeTableName || t.Name == keepTableName && t.Family != nftables.TableFamilyINet) {
			c.DelTable(t)
			removed = append(removed, fam+" "+t.Name)
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	return removed, c.Flush()
}
