package main

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// benchAMQP is added with protocols/amqp.
func benchAMQP(_ context.Context, _ options, stderr io.Writer) ([]row, error) {
	fmt.Fprintln(stderr, "amqp: the AMQP front is not built yet; skipped")
	return nil, nil
}

func newAMQPFront(string, monitoring) (front, error) {
	return nil, errors.New("the AMQP front is not built yet")
}
