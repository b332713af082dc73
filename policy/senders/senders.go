// Package senders remembers, for each Organizational Domain (RFC 9989
// Section 4.10.2), the networks its DMARC-passing mail came from in the
// last 30 days: the "observed sending patterns" that RFC 9989 Section 7.4
// lets a receiver weigh before rejecting. A p=reject failure from such a
// network is quarantined rather than rejected (policy.KnownSenders): a
// domain's own servers that lost a signature, its forwarders, its lists.
//
// The memory is fixed: at most MaxEntries (domain, network) pairs, the
// least recently seen dropped first (an LRU). Networks are IPv4 /24 and
// IPv6 /56, the sizes a mail operator holds. A Recorder takes the judged
// messages (it is a session consumer), works out their Organizational
// Domain off the reply path, and writes the pairs to the store, from which
// they are loaded again at start: so a restart, or another host of a
// fleet sharing PostgreSQL, knows them too.
package senders

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
	"time"
)

// MaxEntries is the most (Organizational Domain, network) pairs kept:
// about 250 bytes each, 12 MB in all (measured with 26-character domain
// names).
const MaxEntries = 50000

// Window is how long a pass from a network counts.
const Window = 30 * 24 * time.Hour

// Network is the network of ip that passes are remembered for: its IPv4
// /24 or IPv6 /56. ok is false for a missing or malformed address.
func Network(ip net.IP) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	bits := 56
	if a.Is4() {
		bits = 24
	}
	p, err := a.Prefix(bits)
	return p, err == nil
}

type key struct {
	org string
	net netip.Prefix
}

type entry struct {
	key
	last time.Time
}

// Set is the bounded memory of passing networks; it is safe for
// concurrent use.
type Set struct {
	mu  sync.Mutex
	max int
	now func() time.Time
	lru *list.List // of *entry, most recently seen first
	m   map[key]*list.Element
}

// New returns an empty Set of at most max pairs (MaxEntries if max <= 0);
// now is the clock (time.Now if nil).
func New(max int, now func() time.Time) *Set {
	if max <= 0 {
		max = MaxEntries
	}
	if now == nil {
		now = time.Now
	}
	return &Set{max: max, now: now, lru: list.New(), m: map[key]*list.Element{}}
}

// Known reports whether mail of org passed DMARC from ip's network within
// Window.
func (s *Set) Known(org string, ip net.IP) bool {
	p, ok := Network(ip)
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.m[key{org, p}]
	return ok && s.now().Sub(el.Value.(*entry).last) < Window
}

// Note records that mail of org passed DMARC from network p at t. It
// reports whether the pair is new to the Set.
func (s *Set) Note(org string, p netip.Prefix, t time.Time) bool {
	k := key{org, p}
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.m[k]; ok {
		e := el.Value.(*entry)
		if t.After(e.last) {
			e.last = t
			s.lru.MoveToFront(el)
		}
		return false
	}
	s.m[k] = s.lru.PushFront(&entry{key: k, last: t})
	for s.lru.Len() > s.max {
		old := s.lru.Remove(s.lru.Back()).(*entry)
		delete(s.m, old.key)
	}
	return true
}

// Len is the number of pairs kept.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}
