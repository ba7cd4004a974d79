package amqp

import (
	"encoding/binary"
	"fmt"
)

// Class ids.
const (
	classConnection = 10
	classChannel    = 20
	classExchange   = 40
	classQueue      = 50
	classBasic      = 60
	classConfirm    = 85
	classTx         = 90
)

// methodID is class << 16 | method.
type methodID uint32

func mid(class, method uint16) methodID { return methodID(class)<<16 | methodID(method) }

// The methods the proxy reads; everything else passes as bytes.
var (
	connStart    = mid(classConnection, 10)
	connStartOk  = mid(classConnection, 11)
	connTune     = mid(classConnection, 30)
	connTuneOk   = mid(classConnection, 31)
	connOpenOk   = mid(classConnection, 41)
	connClose    = mid(classConnection, 50)
	connCloseOk  = mid(classConnection, 51)
	chanOpen     = mid(classChannel, 10)
	chanClose    = mid(classChannel, 40)
	chanCloseOk  = mid(classChannel, 41)
	queueDecl    = mid(classQueue, 10)
	queueDeclOk  = mid(classQueue, 11)
	basicConsume = mid(classBasic, 20)
	basicConsOk  = mid(classBasic, 21)
	basicCancel  = mid(classBasic, 30)
	basicCancOk  = mid(classBasic, 31)
	basicPublish = mid(classBasic, 40)
	basicReturn  = mid(classBasic, 50)
	basicDeliver = mid(classBasic, 60)
	basicGet     = mid(classBasic, 70)
	basicGetOk   = mid(classBasic, 71)
	basicGetEmpt = mid(classBasic, 72)
	basicAck     = mid(classBasic, 80)
	basicNack    = mid(classBasic, 120)
	basicReject  = mid(classBasic, 90)
	confirmSel   = mid(classConfirm, 10)
	txSelect     = mid(classTx, 10)
	txCommit     = mid(classTx, 20)
	txCommitOk   = mid(classTx, 21)
	txRollback   = mid(classTx, 30)
)

var methodNames = map[methodID]string{
	connStart: "Connection.Start", connStartOk: "Connection.StartOk", connTune: "Connection.Tune",
	connTuneOk: "Connection.TuneOk", connClose: "Connection.Close", connCloseOk: "Connection.CloseOk",
	mid(classConnection, 40): "Connection.Open",
	chanOpen:                 "Channel.Open", chanClose: "Channel.Close", chanCloseOk: "Channel.CloseOk",
	mid(classChannel, 20): "Channel.Flow",
	mid(40, 10):           "Exchange.Declare", mid(40, 20): "Exchange.Delete", mid(40, 30): "Exchange.Bind", mid(40, 40): "Exchange.Unbind",
	queueDecl: "Queue.Declare", queueDeclOk: "Queue.DeclareOk", mid(classQueue, 20): "Queue.Bind",
	mid(classQueue, 30): "Queue.Purge", mid(classQueue, 40): "Queue.Delete", mid(classQueue, 50): "Queue.Unbind",
	mid(classBasic, 10): "Basic.Qos", basicConsume: "Basic.Consume", basicConsOk: "Basic.ConsumeOk",
	basicCancel: "Basic.Cancel", basicCancOk: "Basic.CancelOk", basicPublish: "Basic.Publish",
	basicReturn: "Basic.Return", basicDeliver: "Basic.Deliver", basicGet: "Basic.Get", basicGetOk: "Basic.GetOk",
	basicGetEmpt: "Basic.GetEmpty", basicAck: "Basic.Ack", basicReject: "Basic.Reject",
	mid(classBasic, 110): "Basic.Recover", basicNack: "Basic.Nack", confirmSel: "Confirm.Select",
	mid(90, 10): "Tx.Select", mid(90, 20): "Tx.Commit", mid(90, 30): "Tx.Rollback",
}

// methodName names a method for logs and error events.
func methodName(m methodID) string {
	if n, ok := methodNames[m]; ok {
		return n
	}
	return fmt.Sprintf("method %d.%d", m>>16, m&0xffff)
}

// args reads method arguments in order; the first error sticks and later reads return zero values.
type args struct {
	b   []byte
	i   int
	err error
}

func methodArgs(payload []byte) (methodID, args, error) {
	if len(payload) < 4 {
		return 0, args{}, fmt.Errorf("method frame of %d bytes: %w", len(payload), errShort)
	}
	return mid(binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:])), args{b: payload, i: 4}, nil
}

func (a *args) fail(what string, err error) {
	if a.err == nil {
		a.err = fmt.Errorf("%s: %w", what, err)
	}
}

// take consumes n bytes, or records what ran short.
func (a *args) take(n int, what string) []byte {
	if a.err != nil || a.i+n > len(a.b) {
		a.fail(what, errShort)
		return nil
	}
	a.i += n
	return a.b[a.i-n : a.i]
}

func (a *args) u8() byte {
	if b := a.take(1, "octet"); b != nil {
		return b[0]
	}
	return 0
}

func (a *args) u16() uint16 {
	if b := a.take(2, "short"); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (a *args) u32() uint32 {
	if b := a.take(4, "long"); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (a *args) u64() uint64 {
	if b := a.take(8, "longlong"); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (a *args) short() []byte {
	if a.err != nil {
		return nil
	}
	s, j, err := shortstr(a.b, a.i)
	if err != nil {
		a.fail("shortstr", err)
		return nil
	}
	a.i = j
	return s
}

func (a *args) long() []byte {
	if a.err != nil {
		return nil
	}
	n, err := u32len(a.b, a.i)
	if err != nil {
		a.fail("longstr", err)
		return nil
	}
	a.i += 4 + n
	return a.b[a.i-n : a.i]
}

// table returns a field table's entries (without the length prefix) after checking they skip.
func (a *args) table() []byte {
	if a.err != nil {
		return nil
	}
	j, err := skipTable(a.b, a.i)
	if err != nil {
		a.fail("table", err)
		return nil
	}
	t := a.b[a.i+4 : j]
	a.i = j
	return t
}

// closeArgs are the arguments of Connection.Close and Channel.Close.
type closeArgs struct {
	Code   uint16
	Text   []byte
	Method methodID // the method that caused it, 0 if none
}

func (a *args) closeArgs() closeArgs {
	c := closeArgs{Code: a.u16(), Text: a.short()}
	c.Method = mid(a.u16(), a.u16())
	return c
}

// replyNames are the AMQP reply codes' names (0-9-1 spec section 1.2 constants).
var replyNames = map[uint16]string{
	200: "REPLY_SUCCESS", 311: "CONTENT_TOO_LARGE", 312: "NO_ROUTE", 313: "NO_CONSUMERS",
	320: "CONNECTION_FORCED", 402: "INVALID_PATH", 403: "ACCESS_REFUSED", 404: "NOT_FOUND",
	405: "RESOURCE_LOCKED", 406: "PRECONDITION_FAILED", 501: "FRAME_ERROR", 502: "SYNTAX_ERROR",
	503: "COMMAND_INVALID", 504: "CHANNEL_ERROR", 505: "UNEXPECTED_FRAME", 506: "RESOURCE_ERROR",
	530: "NOT_ALLOWED", 540: "NOT_IMPLEMENTED", 541: "INTERNAL_ERROR",
}

func replyName(code uint16) string {
	if n, ok := replyNames[code]; ok {
		return n
	}
	return fmt.Sprintf("REPLY_%d", code)
}

// methodOf is a method frame's method id (0 when the payload is too short to say).
func methodOf(payload []byte) methodID {
	m, _, _ := methodArgs(payload)
	return m
}
