import SystemPackage

/// Why an image could not be loaded. Every case says what was wrong with
/// the image (or with the RAM it was to go into), for the error reply.
public enum LoaderError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The image ends before a structure it must contain.
    case truncated(String)
    /// A magic number, checksum or field value is wrong.
    case badFormat(String)
    /// A well-formed image asks for something this loader does not do.
    case unsupported(String)
    /// The image, or what the loader puts beside it, does not fit in RAM.
    case doesNotFit(String)
    /// The command line is longer than the image accepts.
    case commandLineTooLong(length: Int, limit: Int)
    /// Reading the image failed.
    case io(String, Errno)

    public var description: String {
        switch self {
        case let .truncated(detail): return "truncated image: \(detail)"
        case let .badFormat(detail): return "bad image: \(detail)"
        case let .unsupported(detail): return "unsupported image: \(detail)"
        case let .doesNotFit(detail): return "too little RAM: \(detail)"
        case let .commandLineTooLong(length, limit):
            return "command line of \(length) bytes exceeds the image's limit of \(limit)"
        case let .io(detail, errno): return "\(detail): \(errno)"
        }
    }
}
