//go:build !linux

package main

import "errors"

var errPinLinux = errors.New("--pin is supported on Linux only")

func pinCPUs() (bench, proxy []int, err error) { return nil, nil, errPinLinux }

func pinSelf([]int) error { return errPinLinux }

func pinProcess(string, []int) (func(), error) { return nil, errPinLinux }

func listenerPID(int) (int, error) { return 0, errPinLinux }
