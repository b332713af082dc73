package testutil

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
)

// DiskTB is what SmallDisk needs of a test.
type DiskTB interface {
	TB
	Skip(args ...any)
	Skipf(format string, args ...any)
	TempDir() string
	Cleanup(func())
}

// SmallDisk mounts a tmpfs of size (as mount -o size= takes it, "16m") on
// a new directory, unmounted when the test ends: a real file system that
// fill makes full (dd until "No space left on device") and free empties
// again. It needs root; without, the test is skipped, saying so.
func SmallDisk(t DiskTB, size string) (dir string, fill, free func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a full disk needs a small tmpfs, which needs root")
	}
	dir = t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	filler := filepath.Join(dir, "filler")
	fill = func() { exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=4k").Run() }
	free = func() { os.Remove(filler) }
	return dir, fill, free
}

// FreeAddr returns a loopback TCP address with a port nobody listens on.
func FreeAddr(t TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
