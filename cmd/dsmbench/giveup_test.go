package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestGiveUpAfter(t *testing.T) {
	stuck := make(chan struct{})
	defer close(stuck)
	tests := []struct {
		name    string
		work    func(context.Context) (int, error)
		want    int
		wantErr string // substring; "" for none
	}{
		{"returns", func(context.Context) (int, error) { return 7, nil }, 7, ""},
		{"honours its context", func(ctx context.Context) (int, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		}, 0, "deadline exceeded"},
		// A workload blocked where no context reaches (amqp091's Channel.Close waiting for a
		// broker's Close-Ok) is abandoned after the grace, with an error that says so.
		{"blocked past its context", func(context.Context) (int, error) {
			<-stuck
			return 1, nil
		}, 0, "gave up after --timeout 1ms, and closing the workload's connections had not ended 10ms later"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := giveUpAfter(context.Background(), time.Millisecond, 10*time.Millisecond, tt.work)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
}

func TestGiveUpAfterInterrupted(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	cancel()
	stuck := make(chan struct{})
	defer close(stuck)
	_, err := giveUpAfter(parent, time.Hour, time.Millisecond, func(context.Context) (int, error) {
		<-stuck
		return 0, nil
	})
	if err == nil || !strings.HasPrefix(err.Error(), "interrupted") || !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want one saying the run was interrupted, wrapping context.Canceled", err)
	}
}

func TestExitHooksRunOnce(t *testing.T) {
	var e exitHooks
	runs := map[string]int{}
	doneA := e.add(func() { runs["a"]++ })
	e.add(func() { runs["b"]++ }) // an abandoned workload never calls its own
	doneA()
	e.run()
	doneA()
	e.run()
	if runs["a"] != 1 || runs["b"] != 1 {
		t.Errorf("runs %v, want each undo run once", runs)
	}
}
