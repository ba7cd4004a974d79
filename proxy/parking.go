package proxy

// Parkable is a connection a relay can wait on without holding a read buffer: an idle connection
// then costs its goroutine and socket, not the buffers it reads and writes with. Only a plain TCP
// connection read with raw system calls is one (Parking): TLS may hold decrypted bytes that the
// socket does not show, and other wrappers may hold bytes of their own.
type Parkable interface {
	// ReadParked reads once, like Read, into the buffer pb.Buf gives. When the socket holds
	// nothing it calls pb.Park and waits; Buf is asked again after the wait. A read that finds
	// bytes at once costs what Read does.
	ReadParked(pb ParkBuffer) (int, error)
}

// ParkBuffer is the reader's side of ReadParked.
type ParkBuffer interface {
	Buf() []byte // where to read; not empty
	Park()       // nothing to read: what the reader holds may go back while it waits
}
