/// Numbers of the NBD protocol (the specification's proto.md), named as
/// there. Only what this implementation sends or recognises is listed.
public enum NBDMagic {
    /// "NBDMAGIC", first word of the server's greeting.
    public static let greeting: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": the newstyle greeting, and the start of every option.
    public static let option: UInt64 = 0x4948_4156_454f_5054
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    public static let request: UInt32 = 0x2560_9513
    public static let simpleReply: UInt32 = 0x6744_6698
    public static let structuredReply: UInt32 = 0x668e_33ef
}

/// Handshake flags (server) and client flags.
public enum NBDHandshakeFlag {
    public static let fixedNewstyle: UInt16 = 1 << 0
    public static let noZeroes: UInt16 = 1 << 1
    public static let clientFixedNewstyle: UInt32 = 1 << 0
    public static let clientNoZeroes: UInt32 = 1 << 1
}

/// Per-export transmission flags.
public enum NBDTransmissionFlag {
    public static let hasFlags: UInt16 = 1 << 0
    public static let readOnly: UInt16 = 1 << 1
    public static let sendFlush: UInt16 = 1 << 2
    public static let sendFUA: UInt16 = 1 << 3
    public static let sendTrim: UInt16 = 1 << 5
    public static let sendWriteZeroes: UInt16 = 1 << 6
    public static let sendDF: UInt16 = 1 << 7
    public static let canMultiConn: UInt16 = 1 << 8
}

public enum NBDOption: UInt32, Sendable {
    case exportName = 1
    case abort = 2
    case list = 3
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
}

public enum NBDOptionReply {
    public static let ack: UInt32 = 1
    public static let server: UInt32 = 2
    public static let info: UInt32 = 3
    public static let metaContext: UInt32 = 4
    public static let errUnsupported: UInt32 = 0x8000_0001
    public static let errPolicy: UInt32 = 0x8000_0002
    public static let errInvalid: UInt32 = 0x8000_0003
    public static let errPlatform: UInt32 = 0x8000_0004
    public static let errTLSRequired: UInt32 = 0x8000_0005
    public static let errUnknown: UInt32 = 0x8000_0006
    public static let errShutdown: UInt32 = 0x8000_0007
    public static let errTooBig: UInt32 = 0x8000_0009
}

/// NBD_INFO_* items of NBD_OPT_INFO and NBD_OPT_GO.
public enum NBDInfo {
    public static let export: UInt16 = 0
    public static let name: UInt16 = 1
    public static let description: UInt16 = 2
    public static let blockSize: UInt16 = 3
}

public enum NBDCommand: UInt16, Sendable {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7
}

public enum NBDCommandFlag {
    public static let fua: UInt16 = 1 << 0
    public static let noHole: UInt16 = 1 << 1
    public static let dontFragment: UInt16 = 1 << 2
    public static let reqOne: UInt16 = 1 << 3
    public static let fastZero: UInt16 = 1 << 4
    public static let known: UInt16 = fua | noHole | dontFragment | reqOne | fastZero
}

public enum NBDReplyType {
    public static let none: UInt16 = 0
    public static let offsetData: UInt16 = 1
    public static let offsetHole: UInt16 = 2
    public static let blockStatus: UInt16 = 5
    public static let error: UInt16 = 0x8001
    public static let errorOffset: UInt16 = 0x8002
    public static let flagDone: UInt16 = 1
}

/// Error numbers on the wire (the specification fixes them; they happen to
/// be Linux's).
public enum NBDErrno {
    public static let eperm: UInt32 = 1
    public static let eio: UInt32 = 5
    public static let enomem: UInt32 = 12
    public static let einval: UInt32 = 22
    public static let enospc: UInt32 = 28
    public static let eoverflow: UInt32 = 75
    public static let enotsup: UInt32 = 95
    public static let eshutdown: UInt32 = 108
}

/// Limits this implementation enforces on what peers send.
public enum NBDLimits {
    /// Largest READ or WRITE payload served (and advertised as the maximum
    /// block size): qemu and nbdkit use the same.
    public static let maxPayload: UInt32 = 32 * 1024 * 1024
    /// Largest option payload read during the handshake: an export name is
    /// at most 4096 bytes, and nothing this server accepts needs more.
    public static let maxOptionLength: UInt32 = 64 * 1024
    /// Options one client may send before it is disconnected.
    public static let maxOptions = 64
    public static let maxNameLength = 4096
    public static let metaContextBaseAllocation = "base:allocation"
}
