package api

import (
	"errors"
	"fmt"
	"time"
)

// ServiceStatus is one service as `tether ls` shows it.
type ServiceStatus struct {
	Name      string `json:"name"`
	Protocol  string `json:"protocol"`         // tcp or udp; empty for a mark service
	Listen    string `json:"listen,omitempty"` // VIP:port
	Fwmark    uint32 `json:"fwmark,omitempty"`
	Mode      string `json:"mode"`
	Scheduler string `json:"scheduler"`
	// Persistent services carry their timeout and masks.
	Persistent bool          `json:"persistent"`
	Timeout    time.Duration `json:"timeout,omitempty"`
	Netmask    string        `json:"netmask,omitempty"`
	Netmask6   int           `json:"netmask6,omitempty"`
	Quorum     int           `json:"quorum,omitempty"`
	Quorate    bool          `json:"quorate"`
	// Templates is the number of live persistence templates.
	Templates int `json:"templates"`
	// Listeners are the addresses a mark service's class is listened on
	// instead of TPROXYed (config tproxy: auto); empty when it is TPROXYed.
	Listeners []string `json:"listeners,omitempty"`
	// KernelDrops are the datagrams the kernel dropped on a UDP
	// service's socket before tether read them (a full receive buffer).
	KernelDrops uint64         `json:"kernel_drops,omitempty"`
	Servers     []ServerStatus `json:"servers"`
	Sorry       *ServerStatus  `json:"sorry_server,omitempty"`
}

// ServerStatus is one real server of a service. Its connection counts are
// ipvsadm's: ActiveConns are open TCP connections (or director flows),
// InactiveConns are UDP flows.
type ServerStatus struct {
	Address       string `json:"address"`
	Weight        int    `json:"weight"`        // in force
	ConfigWeight  int    `json:"config_weight"` // from the file, or server set --weight
	State         string `json:"state"`         // up, down, inhibited, maint, drain, failed
	Check         string `json:"check,omitempty"`
	CheckError    string `json:"check_error,omitempty"` // the last failure, if the last check failed
	ActiveConns   int64  `json:"active_conns"`
	InactiveConns int64  `json:"inactive_conns"`
	Conns         uint64 `json:"conns"` // connections and flows since start
	ConnectFails  uint64 `json:"connect_fails"`
	BytesIn       uint64 `json:"bytes_in"` // from clients; the director does not count bytes
	BytesOut      uint64 `json:"bytes_out"`
}

// ServerChange is what `tether server set` asks of a server; exactly one
// of its fields is set.
type ServerChange struct {
	Weight *int `json:"weight,omitempty"` // a new weight, 0..65535
	Drain  bool `json:"drain,omitempty"`  // weight 0: no new clients, templates kept
	Up     bool `json:"up,omitempty"`     // undo drain and down
	Down   bool `json:"down,omitempty"`   // no clients, templates dropped
}

// Check says what is wrong with a change, or nil.
func (ch ServerChange) Check() error {
	n := 0
	for _, b := range []bool{ch.Weight != nil, ch.Drain, ch.Up, ch.Down} {
		if b {
			n++
		}
	}
	if n != 1 {
		return errors.New("say exactly one of weight, drain, up and down")
	}
	if ch.Weight != nil && (*ch.Weight < 0 || *ch.Weight > 65535) {
		return fmt.Errorf("weight %d is outside 0..65535", *ch.Weight)
	}
	return nil
}

// ServerRequest is the body of POST /v1/server.
type ServerRequest struct {
	Service string `json:"service"`
	Server  string `json:"server"`
	ServerChange
}

// TemplateStatus is one persistence template as `tether affinity ls`
// shows it.
type TemplateStatus struct {
	Service   string        `json:"service"`
	Client    string        `json:"client"` // the masked client, as a prefix
	Server    string        `json:"server"`
	Active    int           `json:"active"`          // open connections through it
	Peers     int           `json:"peers,omitempty"` // other instances with connections open through it
	Remaining time.Duration `json:"remaining"`
}

// ClusterMember is one instance of the cluster (tether cluster members).
type ClusterMember struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`
	State string `json:"state"` // alive, suspect, dead, left
	Self  bool   `json:"self,omitempty"`
	// Templates: this instance's table, or the peer's last full state.
	Templates int `json:"templates"`
	// Holds: the peer's open templates held here.
	Holds int `json:"holds"`
	// Lag: since the peer was last heard from.
	Lag time.Duration `json:"lag"`
}

// ClusterStatus is the cluster as one instance sees it.
type ClusterStatus struct {
	Ready   bool            `json:"ready"`
	Members []ClusterMember `json:"members"`
	// QueueDepth is its broadcasts waiting to go out; Dropped the
	// messages it refused.
	QueueDepth int    `json:"queue_depth"`
	Dropped    uint64 `json:"dropped"`
}

// TemplateFilter selects templates; each empty field selects all.
type TemplateFilter struct {
	Service string // a service name
	Client  string // an address: the template it falls into
	Server  string // a server address
}

// ErrNotFound: no such service or server. The API answers it with 404.
var ErrNotFound = errors.New("not found")

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// ReloadResult is the answer to POST /v1/reload.
type ReloadResult struct {
	Services int `json:"services"` // services running now
	// RestartNeeded names the changed settings that take effect only at
	// the next start (config.RestartNeeded).
	RestartNeeded []string `json:"restart_needed,omitempty"`
}
