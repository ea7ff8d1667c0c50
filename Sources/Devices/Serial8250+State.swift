import ColoProtocol
import Foundation

/// Saving and loading the UART (a checkpoint or migration).
extension Serial8250 {
    /// The registers and unread input, as saved state.
    public var savedState: ColoSerialSavedState {
        lock.withLock {
            var saved = ColoSerialSavedState()
            saved.interruptEnable = UInt32(state.interruptEnable)
            saved.lineControl = UInt32(state.lineControl)
            saved.modemControl = UInt32(state.modemControl)
            saved.scratch = UInt32(state.scratch)
            saved.divisorLow = UInt32(state.divisorLow)
            saved.divisorHigh = UInt32(state.divisorHigh)
            saved.fifoEnabled = state.fifoEnabled
            saved.transmitInterruptPending = state.transmitInterruptPending
            saved.receiveBuffer = Data(state.receiveBuffer)
            return saved
        }
    }

    /// Why `saved` cannot be loaded, or nil.
    public static func problem(loading saved: ColoSerialSavedState) -> String? {
        let registers = [saved.interruptEnable, saved.lineControl, saved.modemControl, saved.scratch,
                         saved.divisorLow, saved.divisorHigh]
        guard registers.allSatisfy({ $0 <= 0xFF }) else { return "serial register value above 0xFF" }
        guard saved.receiveBuffer.count <= receiveCapacity else {
            return "serial receive buffer of \(saved.receiveBuffer.count) bytes exceeds \(receiveCapacity)"
        }
        return nil
    }

    /// Takes `saved` (checked with `problem`) and drives the interrupt line
    /// to match it.
    public func load(_ saved: ColoSerialSavedState) {
        lock.withLock {
            var loaded = SerialState()
            loaded.interruptEnable = UInt8(saved.interruptEnable)
            loaded.lineControl = UInt8(saved.lineControl)
            loaded.modemControl = UInt8(saved.modemControl)
            loaded.scratch = UInt8(saved.scratch)
            loaded.divisorLow = UInt8(saved.divisorLow)
            loaded.divisorHigh = UInt8(saved.divisorHigh)
            loaded.fifoEnabled = saved.fifoEnabled
            loaded.transmitInterruptPending = saved.transmitInterruptPending
            loaded.receiveBuffer = [UInt8](saved.receiveBuffer)
            state = loaded
            interrupt.set(high: false)
            lineHigh = false
            updateLine()
        }
    }
}
