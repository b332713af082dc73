//go:build !linux

package milter

import (
	"io"
	"net"
)

// newRawIO returns nc: raw socket calls are used on Linux only (see
// rawio_linux.go).
func newRawIO(nc net.Conn) io.ReadWriter { return nc }
