package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kfake"
)

// brokerArg re-executes dsmbench as the Kafka broker process.
const brokerArg = "__kfake"

// newBenchCluster is the benchmark's Kafka cluster: one kfake broker, topics created on first use.
func newBenchCluster(partitions int) (*kfake.Cluster, error) {
	return kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(partitions), kfake.AllowAutoTopicCreation(),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": "16777216"}))
}

// runBroker: dsmbench __kfake PARTITIONS. It prints "LISTEN addr[,addr...]", answers each "gc"
// line on stdin with a collection and "ok", and exits when stdin closes.
func runBroker(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "dsmbench __kfake PARTITIONS")
		return 2
	}
	partitions, err := strconv.Atoi(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	offPhaseGC()
	cluster, err := newBenchCluster(partitions)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cluster.Close()
	fmt.Printf("LISTEN %s\n", strings.Join(cluster.ListenAddrs(), ","))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "gc" {
			runtime.GC()
			fmt.Println("ok")
		}
	}
	return 0
}

// kafkaBroker is the cluster a Kafka benchmark runs against.
type kafkaBroker struct {
	bootstrap string
	collect   func() error // a collection in the broker's own process, between timed phases
	stop      func()
}

// startBroker runs the cluster in its own process, as a real broker runs, or with inProcess in
// this one: there, the clients and the broker share one Go scheduler, and a request handed from
// one to the other often costs a goroutine switch where between processes it costs an OS wake-up;
// the path through the proxy pays those wake-ups either way, so in-process direct runs are
// faster than any real deployment's.
func startBroker(partitions int, inProcess bool, stderr io.Writer) (*kafkaBroker, error) {
	if inProcess {
		// Its heap is this process's, whose collections benchKafka already schedules.
		cluster, err := newBenchCluster(partitions)
		if err != nil {
			return nil, err
		}
		return &kafkaBroker{
			bootstrap: strings.Join(cluster.ListenAddrs(), ","),
			collect:   func() error { return nil },
			stop:      cluster.Close,
		}, nil
	}
	cp, err := startChild(stderr, nil, brokerArg, strconv.Itoa(partitions))
	if err != nil {
		return nil, err
	}
	return &kafkaBroker{
		bootstrap: cp.addr,
		collect: func() error {
			if _, err := io.WriteString(cp.stdin, "gc\n"); err != nil {
				return fmt.Errorf("broker process: %w", err)
			}
			if line, err := cp.out.ReadString('\n'); err != nil || line != "ok\n" {
				return fmt.Errorf("broker process answered %q to gc: %v", line, err)
			}
			return nil
		},
		stop: cp.stop,
	}, nil
}
