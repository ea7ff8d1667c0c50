@testable import Devices
import ControlSocket
import XCTest

final class PlatformDeviceTests: XCTestCase {
    func testUnclaimedPortsFloatHighAndIgnoreWrites() {
        let bus = PortBus()
        XCTAssertEqual(bus.read(port: 0x99, size: 1).value, 0xFF)
        XCTAssertEqual(bus.read(port: 0x99, size: 2).value, 0xFFFF)
        XCTAssertEqual(bus.read(port: 0xFFFF, size: 4).value, 0xFFFF_FFFF)
        XCTAssertEqual(bus.read(port: 0x99, size: 1).outcome, .unclaimed)
        XCTAssertEqual(bus.write(port: 0x99, size: 4, value: 0x1234), .unclaimed)
    }

    func testOverlappingWindowsAreRefused() {
        let bus = PortBus()
        let serial = Serial8250(interrupt: RecordingLine(), output: { _ in })
        XCTAssertTrue(bus.register(base: 0x3F8, length: 8, device: serial))
        XCTAssertFalse(bus.register(base: 0x3FC, length: 8, device: serial))
        XCTAssertFalse(bus.register(base: 0xFFFC, length: 8, device: serial))
    }

    func testSerialTransmitsReceivesAndRaisesItsLine() {
        let output = OutputCollector()
        let line = RecordingLine()
        let serial = Serial8250(interrupt: line, output: { output.append($0) })
        for byte in Array("hi\n".utf8) {
            XCTAssertEqual(serial.read(offset: 5, size: 1) & 0x20, 0x20, "THR empty")
            serial.write(offset: 0, size: 1, value: UInt32(byte))
        }
        XCTAssertEqual(output.bytes, Array("hi\n".utf8))
        serial.write(offset: 7, size: 1, value: 0x5A)
        XCTAssertEqual(serial.read(offset: 7, size: 1), 0x5A)

        // Receive interrupt: enabled in IER, gated by MCR OUT2.
        serial.write(offset: 1, size: 1, value: 0x01)
        serial.write(offset: 4, size: 1, value: 0x08)
        XCTAssertFalse(line.isHigh)
        XCTAssertEqual(serial.receive([0x41, 0x42]), 2)
        XCTAssertTrue(line.isHigh)
        XCTAssertEqual(serial.read(offset: 2, size: 1) & 0x0F, 0x04)
        XCTAssertEqual(serial.read(offset: 5, size: 1) & 0x01, 0x01)
        XCTAssertEqual(serial.read(offset: 0, size: 1), 0x41)
        XCTAssertEqual(serial.read(offset: 0, size: 1), 0x42)
        XCTAssertFalse(line.isHigh)
        XCTAssertEqual(serial.read(offset: 2, size: 1) & 0x0F, 0x01, "no interrupt pending")
        XCTAssertEqual(serial.receive([UInt8](repeating: 0, count: 5000)), Serial8250.receiveCapacity)
    }

    func testPCIConfigurationMechanismOne() {
        let pci = PciBus()
        pci.attach(PciHostBridge(), slot: 0)
        func read(slot: UInt32, offset: UInt32, size: Int = 4, function: UInt32 = 0, bus: UInt32 = 0) -> UInt32 {
            pci.write(offset: 0, size: 4, value: 0x8000_0000 | bus << 16 | slot << 11 | function << 8 | offset)
            return pci.read(offset: UInt16(4 + (offset & 3)), size: size)
        }
        XCTAssertEqual(read(slot: 0, offset: 0), 0x1237_8086)
        XCTAssertEqual(read(slot: 0, offset: 0x0A, size: 2), 0x0600)
        XCTAssertEqual(read(slot: 5, offset: 0), 0xFFFF_FFFF, "empty slot")
        XCTAssertEqual(read(slot: 0, offset: 0, function: 1), 0xFFFF_FFFF, "no function 1")
        XCTAssertEqual(read(slot: 0, offset: 0, bus: 1), 0xFFFF_FFFF, "no bus 1")
        pci.write(offset: 0, size: 4, value: 0)                      // enable bit clear
        XCTAssertEqual(pci.read(offset: 4, size: 4), 0xFFFF_FFFF)
        XCTAssertEqual(pci.read(offset: 1, size: 1), 0xFF, "a byte at 0xCF9 is not the address register")
    }

    func testIOBarSizingAndMoving() {
        var space = PciConfigSpace(vendor: 0x1AF4, device: 0x1000, classCode: 0x02_0000, interruptPin: 1)
        space.setIOBar(0, size: 0x40, address: 0xC000)
        XCTAssertEqual(space.read(offset: 0x10, size: 4), 0xC001)
        XCTAssertNil(space.ioBarAddress(0), "I/O decode off")
        space.write(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        XCTAssertEqual(space.read(offset: 0x10, size: 4), 0xFFC1, "size mask, I/O bit")
        space.write(offset: 0x10, size: 4, value: 0xD000)
        space.write(offset: 0x04, size: 2, value: 0xFFFF)
        XCTAssertEqual(space.command, 0x0407, "only I/O, memory, bus master, INTx disable are writable")
        XCTAssertEqual(space.ioBarAddress(0), 0xD000)
        space.write(offset: 0x00, size: 4, value: 0)
        XCTAssertEqual(space.read(offset: 0, size: 4), 0x1000_1AF4, "IDs are read-only")
    }

    func testPowerControlPowersOffOnSleepEnable() {
        let calls = OutputCollector()
        let power = PowerControl { calls.append(1) }
        XCTAssertEqual(power.read(offset: 0, size: 2) & 1, 1, "SCI_EN")
        power.write(offset: 0, size: 2, value: 0x0001)
        XCTAssertTrue(calls.bytes.isEmpty)
        power.write(offset: 0, size: 2, value: 0x2000)
        XCTAssertEqual(calls.bytes.count, 1)
    }
}

final class OutputCollector: @unchecked Sendable {
    private let lock = ThreadLock()
    private var collected: [UInt8] = []
    func append(_ byte: UInt8) { lock.withLock { collected.append(byte) } }
    var bytes: [UInt8] { lock.withLock { collected } }
}
