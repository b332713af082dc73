// Package conformance locates the shared public conformance data
// (../shared/conformance beside the project checkout) for tests.
//
// The data is never copied into the project: tests read it in place and skip,
// saying so, when it is not there.
package conformance

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir returns the path of ../shared/conformance/<sub> relative to the module
// root (the directory holding go.mod). If it does not exist, the test is
// skipped with a message naming the missing path.
func Dir(t testing.TB, sub string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Skipf("conformance data: cannot find module root: %v", err)
	}
	dir := filepath.Join(root, "..", "shared", "conformance", sub)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("conformance data not present, skipping: %s (%v)", dir, err)
	}
	return dir
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}
