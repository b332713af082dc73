package dmarc

import "sync"

// RecordCache keeps parsed DMARC records by their text, so that a busy
// host parses a domain's record once rather than once per message (the
// DNS cache still decides how long the text is used). The Records it
// returns are shared: they must not be modified. It is safe for
// concurrent use; a nil *RecordCache parses every time.
type RecordCache struct {
	mu  sync.Mutex
	max int
	m   map[string]parsed
}

type parsed struct {
	rec *Record
	err error
}

// NewRecordCache returns a cache of at most size records; when it is
// full it is emptied, which costs only parsing again.
func NewRecordCache(size int) *RecordCache {
	return &RecordCache{max: max(size, 1), m: map[string]parsed{}}
}

// Parse is ParseRecord, from the cache when txt was parsed before.
func (c *RecordCache) Parse(txt string) (*Record, error) {
	if c == nil {
		return ParseRecord(txt)
	}
	c.mu.Lock()
	p, ok := c.m[txt]
	c.mu.Unlock()
	if ok {
		return p.rec, p.err
	}
	rec, err := ParseRecord(txt)
	c.mu.Lock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[txt] = parsed{rec, err}
	c.mu.Unlock()
	return rec, err
}
