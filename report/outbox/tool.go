package outbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Entry is one spooled message, as the spool commands show it.
type Entry struct {
	Envelope
	Size int `json:"size"` // of the message, in bytes
}

// ErrNoSuchReport is returned for an ID that is not in the spool.
var ErrNoSuchReport = errors.New("no such report in the spool")

// List returns the messages in the spool directory, oldest first. It only
// reads, so it is safe while the daemon runs.
func List(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("outbox: spool: %w", err)
	}
	var out []Entry
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), spoolExt) || !de.Type().IsRegular() {
			continue
		}
		env, msg, err := readSpoolFile(filepath.Join(dir, de.Name()))
		if err != nil {
			continue // delivered or dropped meanwhile, or being written
		}
		out = append(out, Entry{Envelope: env, Size: len(msg)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Read returns one spooled message and its envelope.
func Read(dir, id string) (Entry, []byte, error) {
	path, err := spoolPath(dir, id)
	if err != nil {
		return Entry{}, nil, err
	}
	env, msg, err := readSpoolFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Entry{}, nil, ErrNoSuchReport
	}
	if err != nil {
		return Entry{}, nil, fmt.Errorf("outbox: spool: %w", err)
	}
	return Entry{Envelope: env, Size: len(msg)}, msg, nil
}

// Retry makes a spooled message due now (its attempts kept). The file is
// rewritten atomically; a running daemon takes the new time up at its next
// look at the spool (within a minute).
func Retry(dir, id string, now time.Time) error {
	path, err := spoolPath(dir, id)
	if err != nil {
		return err
	}
	env, msg, err := readSpoolFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return ErrNoSuchReport
	}
	if err != nil {
		return fmt.Errorf("outbox: spool: %w", err)
	}
	env.NextAttempt = now
	return writeSpoolFile(path, tmpPrefix+"cli-", env, msg)
}

// Drop removes a spooled message: it will not be sent. A running daemon
// notices when the message comes due (logged as dropped).
func Drop(dir, id string) error {
	path, err := spoolPath(dir, id)
	if err != nil {
		return err
	}
	if err := os.Remove(path); errors.Is(err, os.ErrNotExist) {
		return ErrNoSuchReport
	} else if err != nil {
		return fmt.Errorf("outbox: spool: %w", err)
	}
	return syncDir(dir)
}

// Migrate moves the spooled messages of an earlier spool directory old into
// dir (renames, each atomic; the directories are fsynced) and removes old
// once it is empty. A missing old is no error. It returns how many moved.
func Migrate(old, dir string) (int, error) {
	des, err := os.ReadDir(old)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, de := range des {
		name := de.Name()
		path := filepath.Join(old, name)
		switch {
		case strings.HasSuffix(name, spoolExt) && de.Type().IsRegular():
			if err := os.Rename(path, filepath.Join(dir, name)); err != nil {
				return n, err
			}
			n++
		case strings.HasPrefix(name, tmpPrefix):
			os.Remove(path) // never complete
		}
	}
	if err := syncDir(dir); err != nil {
		return n, err
	}
	os.Remove(old) // only if empty
	return n, syncDir(filepath.Dir(old))
}
