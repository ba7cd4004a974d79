package main

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"unsafe"
)

// openTerminal opens a new pseudo-terminal: its follower side, a terminal to write to, and its
// leader side, which reads what was written (nil, nil where there is none).
func openTerminal(t *testing.T) (tty, leader *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Logf("no pseudo-terminal here (%v): the terminal case is not checked", err)
		return nil, nil
	}
	t.Cleanup(func() { ptmx.Close() })
	// Through SyscallConn, not Fd: Fd puts the file in blocking mode, where read deadlines are
	// not kept, and a read of the leader that found nothing hung the test until its timeout.
	rc, err := ptmx.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var unlock int32
	var n uint32
	var e syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		if _, _, e = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
			return
		}
		_, _, e = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n)))
	}); err != nil || e != 0 {
		t.Fatalf("unlocking and numbering the pseudo-terminal: %v %v", err, e)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Logf("pseudo-terminal %d cannot be opened (%v): the terminal case is not checked", n, err)
		return nil, nil
	}
	t.Cleanup(func() { tty.Close() })
	return tty, ptmx
}
