//go:build !linux

package main

import "errors"

func pinCPUs() (bench, proxy []int, err error) {
	return nil, nil, errors.New("--pin is supported on Linux only")
}

func pinSelf([]int) error { return errors.New("--pin is supported on Linux only") }
