import ControlSocket

/// The registers of a 16550A UART, as plain data (what a snapshot saves).
public struct SerialState: Sendable, Equatable {
    public var interruptEnable: UInt8 = 0
    public var lineControl: UInt8 = 0
    public var modemControl: UInt8 = 0
    public var scratch: UInt8 = 0
    public var divisorLow: UInt8 = 1
    public var divisorHigh: UInt8 = 0
    public var fifoEnabled = false
    /// The transmitter-empty interrupt is owed (set when the holding
    /// register empties with that interrupt enabled; cleared by reading IIR
    /// or writing THR).
    public var transmitInterruptPending = false
    /// Received bytes not yet read by the guest.
    public var receiveBuffer: [UInt8] = []

    public init() {}
}

/// An 8250/16550A serial port (COM1): every byte the guest transmits goes
/// to `output` at once (the line never busies), bytes given to `receive`
/// queue for the guest to read, and the interrupt line follows the enabled
/// conditions gated by MCR OUT2, as on a PC.
public final class Serial8250: PortDevice, @unchecked Sendable {
    public static let com1Base: UInt16 = 0x3F8
    public static let com1IRQ: UInt32 = 4
    /// How many received bytes wait for the guest at most; `receive` takes
    /// no more until it reads.
    public static let receiveCapacity = 1024

    let lock = ThreadLock()
    var state = SerialState()
    var lineHigh = false
    let interrupt: any InterruptLine
    private let output: @Sendable (UInt8) -> Void

    enum Register {
        static let data: UInt16 = 0, interruptEnable: UInt16 = 1, interruptIdentification: UInt16 = 2
        static let lineControl: UInt16 = 3, modemControl: UInt16 = 4, lineStatus: UInt16 = 5
        static let modemStatus: UInt16 = 6, scratch: UInt16 = 7
    }

    static let divisorLatchAccess: UInt8 = 0x80
    static let receiveInterrupt: UInt8 = 0x01, transmitInterrupt: UInt8 = 0x02
    static let out2: UInt8 = 0x08, loopback: UInt8 = 0x10

    public init(interrupt: any InterruptLine, output: @escaping @Sendable (UInt8) -> Void) {
        self.interrupt = interrupt
        self.output = output
    }

    /// The registers now.
    public var snapshot: SerialState { lock.withLock { state } }

    /// Queues bytes for the guest to read; returns how many were taken.
    @discardableResult
    public func receive(_ bytes: some Collection<UInt8>) -> Int {
        lock.withLock {
            let taken = min(bytes.count, Self.receiveCapacity - state.receiveBuffer.count)
            state.receiveBuffer.append(contentsOf: bytes.prefix(taken))
            updateLine()
            return taken
        }
    }

    /// Room for more received bytes.
    public var canReceive: Bool { lock.withLock { state.receiveBuffer.count < Self.receiveCapacity } }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        lock.withLock {
            let value = readRegister(offset)
            updateLine()
            return UInt32(value)
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        lock.withLock {
            writeRegister(offset, UInt8(truncatingIfNeeded: value))
            updateLine()
        }
    }

    private var divisorLatch: Bool { state.lineControl & Self.divisorLatchAccess != 0 }

    private func readRegister(_ offset: UInt16) -> UInt8 {
        switch offset {
        case Register.data:
            if divisorLatch { return state.divisorLow }
            return state.receiveBuffer.isEmpty ? 0 : state.receiveBuffer.removeFirst()
        case Register.interruptEnable:
            return divisorLatch ? state.divisorHigh : state.interruptEnable
        case Register.interruptIdentification:
            let fifo: UInt8 = state.fifoEnabled ? 0xC0 : 0
            if !state.receiveBuffer.isEmpty && state.interruptEnable & Self.receiveInterrupt != 0 {
                return fifo | 0x04
            }
            if state.transmitInterruptPending && state.interruptEnable & Self.transmitInterrupt != 0 {
                state.transmitInterruptPending = false
                return fifo | 0x02
            }
            return fifo | 0x01
        case Register.lineControl:
            return state.lineControl
        case Register.modemControl:
            return state.modemControl
        case Register.lineStatus:
            // Transmitter always empty (THRE, TEMT); data ready when queued.
            return 0x60 | (state.receiveBuffer.isEmpty ? 0 : 0x01)
        case Register.modemStatus:
            if state.modemControl & Self.loopback != 0 {
                // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                let control = state.modemControl
                return (control & 0x01) << 5 | (control & 0x02) << 3 | (control & 0x04) << 4 | (control & 0x08) << 4
            }
            return 0xB0        // DCD, DSR, CTS: a terminal is attached
        default:
            return state.scratch
        }
    }

    private func writeRegister(_ offset: UInt16, _ value: UInt8) {
        switch offset {
        case Register.data:
            if divisorLatch {
                state.divisorLow = value
            } else {
                if state.modemControl & Self.loopback != 0 {
                    if state.receiveBuffer.count < Self.receiveCapacity { state.receiveBuffer.append(value) }
                } else {
                    output(value)
                }
                state.transmitInterruptPending = state.interruptEnable & Self.transmitInterrupt != 0
            }
        case Register.interruptEnable:
            if divisorLatch {
                state.divisorHigh = value
            } else {
                let enabling = value & ~state.interruptEnable & Self.transmitInterrupt != 0
                state.interruptEnable = value & 0x0F
                if enabling { state.transmitInterruptPending = true }
            }
        case Register.interruptIdentification:
            state.fifoEnabled = value & 0x01 != 0
            if value & 0x02 != 0 { state.receiveBuffer.removeAll() }
        case Register.lineControl:
            state.lineControl = value
        case Register.modemControl:
            state.modemControl = value & 0x1F
        case Register.scratch:
            state.scratch = value
        default:
            break          // LSR and MSR are read-only
        }
    }

    func updateLine() {
        let pending = (!state.receiveBuffer.isEmpty && state.interruptEnable & Self.receiveInterrupt != 0)
            || (state.transmitInterruptPending && state.interruptEnable & Self.transmitInterrupt != 0)
        let high = pending && state.modemControl & Self.out2 != 0
        if high != lineHigh {
            lineHigh = high
            interrupt.set(high: high)
        }
    }
}
