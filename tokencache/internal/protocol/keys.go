package protocol

import "strconv"

// Keys are the Redis names of one cached token. The keys share a hash tag,
// so they live in one cluster slot and one script may touch them all; the
// channel is the namespace's, shared by its users' tokens.
type Keys struct {
	Token  string // the token's Record
	Lock   string // the refresh lock
	Fence  string // the fencing counter
	Failed string // the fleet's last refresh Failure
	// Accepted prefixes the keys that record, per generation, that the
	// API accepted the token stored with it (see AcceptedKey).
	Accepted string
	// Drawn remembers, for the life of a lease, the generation it drew
	// (see Client.Begin).
	Drawn   string
	Channel string // the namespace's events channel
	// NSSlot: the keys share the namespace's hash tag, so a script on
	// them may SPUBLISH to its channel in a cluster and count its issuer
	// budget.
	NSSlot bool
}

// FailedSuffix names the key that remembers the last refresh failure for
// the fleet, for the length of its back-off window.
const FailedSuffix = ":failed"

// AcceptedSuffix, then ":<generation>", names the key that records that
// the API accepted the token stored with that generation: its value is the
// token's fingerprint (never the token), and it expires with the token.
const AcceptedSuffix = ":accepted"

// AcceptedKey is the key that records that the API accepted the token
// stored under k with generation gen.
func (k Keys) AcceptedKey(gen int64) string {
	return k.Accepted + ":" + strconv.FormatInt(gen, 10)
}

// ServerKeys are the keys of the namespace's server token.
func ServerKeys(prefix, ns string) Keys {
	base := prefix + ":{" + ns + "}:server"
	return Keys{Token: base, Lock: base + ":lock", Fence: base + ":fence", Failed: base + FailedSuffix,
		Accepted: base + AcceptedSuffix, Drawn: base + ":drawn", Channel: EventsChannel(prefix, ns), NSSlot: true}
}

// ClientKeys are the keys of user's client token: in a slot of their own,
// so a fleet's users spread over a cluster.
func ClientKeys(prefix, ns, user string) Keys {
	base := prefix + ":{" + ns + "/" + user + "}:client"
	return Keys{Token: base, Lock: base + ":lock", Fence: base + ":fence", Failed: base + FailedSuffix,
		Accepted: base + AcceptedSuffix, Drawn: base + ":drawn", Channel: EventsChannel(prefix, ns)}
}

// EventsChannel is the namespace's events channel.
func EventsChannel(prefix, ns string) string { return prefix + ":{" + ns + "}:events" }

// BudgetKey is the namespace's issuer budget counter.
func BudgetKey(prefix, ns string) string { return prefix + ":{" + ns + "}:budget" }
