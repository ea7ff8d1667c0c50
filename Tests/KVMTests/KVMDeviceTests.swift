import KVM
import XCTest

final class KVMDeviceTests: XCTestCase {
    func testAnFdThatIsNotKVMIsRefused() {
        XCTAssertThrowsError(try KVMDevice(path: "/dev/null")) { error in
            guard case KVMError.notKVM = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("not a KVM device"))
        }
        XCTAssertThrowsError(try KVMDevice(path: "/nonexistent/kvm")) { error in
            XCTAssertEqual("\(error)", "cannot open /nonexistent/kvm: No such file or directory")
        }
    }

    func testEveryIoctlHasADistinctRequestNumber() {
        let numbers = KVMIoctl.allCases.map(\.number)
        XCTAssertEqual(Set(numbers).count, numbers.count)
        XCTAssertEqual(KVMIoctl.run.number, 0xAE80)
        XCTAssertEqual(KVMIoctl.getAPIVersion.number, 0xAE00)
    }

    func testVMWithVcpuWhenKVMIsPresent() throws {
        guard let kvm = try? KVMDevice() else { throw XCTSkip("no usable /dev/kvm here") }
        let vm = try kvm.createVirtualMachine()
        try vm.createInterruptController()
        let vcpu = try vm.createVcpu(id: 0)
        var registers = try vcpu.generalRegisters()
        registers.rip = 0x1234
        try vcpu.setGeneralRegisters(registers)
        XCTAssertEqual(try vcpu.generalRegisters().rip, 0x1234)
        XCTAssertFalse(try kvm.supportedCPUID().isEmpty)
    }
}
