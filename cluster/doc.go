// Package cluster shares persistence templates between tether instances
// behind ECMP routing or a VRRP-moved VIP, so that a client keeps its real
// server whichever instance its connections land on, and across a
// failover.
//
// It is built on github.com/hashicorp/memberlist: gossip for membership
// and failure detection; its best-effort messages for template changes
// (batched every GossipInterval, newest state of a template only, sent by
// each instance to every other: the TransmitLimitedQueue sends a broadcast
// to a few random members only, and in the ECMP test 2 of 200 templates
// never reached one instance that way); the TransmitLimitedQueue, with
// relays, for the rare invalidations; push/pull for the full state a
// joining instance receives before it says ready, which also repairs lost
// messages every PushPullInterval; its AES-GCM keyring for encryption and
// its label to keep clusters apart.
//
// What is shared: each instance broadcasts its own templates when its
// first connection through one opens (busy) and when its last closes
// (idle, with the time left). A peer's busy template is held open on
// every other instance (affinity.Table.Adopt with hold) until the peer
// says idle or leaves, so no instance expires a template a client still
// uses elsewhere. Expiry and eviction stay each instance's own; `tether
// affinity rm` (Invalidate) and operators' server changes (ServerChanged)
// are broadcast.
//
// Conflicts: two instances that bind one client to different servers end
// on the server with the higher affinity.Score (a rendezvous hash of the
// masked client and the server) on every instance, whatever the order,
// loss or repetition of messages; a server unusable on an instance always
// loses there. An instance whose server wins answers the loser's
// broadcast with its own.
//
// Bounds: the outbox and the broadcast queue (QueueDepth; beyond it
// changes wait for the next full-state exchange), the peers' holds
// (MaxHolds), a full state (MaxStateTemplates, and 18 MB, under
// memberlist's 20 MB: 14 bytes a template, so over a million). A message that does not decode is refused whole,
// counted and logged (with back-off), and changes nothing.
package cluster
