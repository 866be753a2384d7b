"""PF_KEY v2 constants: the project's canonical names and numbers.

The enums here are the *in-memory* model shared by both wire dialects.  Where the
FreeBSD and Linux headers agree (message types 0-22, extension types 1-23, satypes,
SA states, policy types and levels) the canonical value is the wire value.  Where
they disagree the canonical value is the FreeBSD one, and names that exist only in
Linux get a value above 0xff that can never be mistaken for a wire number; the
per-dialect translation lives in :mod:`pfkeyd.wire.dialect`.

Member names keep the spelling of RFC 2367 and of ``<net/pfkeyv2.h>`` without the
``SADB_`` prefix (``MsgType.GETSPI``, ``ExtType.X_SA2``) so the code can be grepped
against both.
"""

from __future__ import annotations

import enum

__all__ = [
    "PF_KEY_V2",
    "UNIT",
    "LINUX_ONLY",
    "UNKNOWN",
    "MsgType",
    "ExtType",
    "SaType",
    "SaState",
    "SaFlag",
    "AuthAlg",
    "EncAlg",
    "CompAlg",
    "PolicyType",
    "Direction",
    "Level",
    "Mode",
    "PolicyScope",
    "IdentType",
    "NatTType",
    "IpProto",
    "SATYPE_PROTO",
    "PROTO_SATYPE",
    "IPSEC_ULPROTO_ANY",
    "IPSEC_PORT_ANY",
    "IPSEC_MANUAL_REQID_MAX",
    "X_EXT_OLD",
    "X_EXT_PMASK",
    "KEY_FLAGS_MAX",
]

PF_KEY_V2 = 2
#: Every PF_KEY length is counted in 8-byte units (RFC 2367 §2.2), except the
#: ipsecrequest length, which counts bytes.
UNIT = 8

#: Canonical values of names that only the Linux headers define.
LINUX_ONLY = 0x100
#: Canonical value of a wire number that the dialect does not define: UNKNOWN | n.
#: It survives a decode/encode round trip unchanged and the engine rejects it as
#: the reference kernel rejects an unknown number.
UNKNOWN = 0x8000

IPSEC_ULPROTO_ANY = 255
IPSEC_PORT_ANY = 0
IPSEC_MANUAL_REQID_MAX = 0x3FFF


class MsgType(enum.IntEnum):
    """sadb_msg_type (RFC 2367 §2.3.2; KAME and Linux extensions)."""

    RESERVED = 0
    GETSPI = 1
    UPDATE = 2
    ADD = 3
    DELETE = 4
    GET = 5
    ACQUIRE = 6
    REGISTER = 7
    EXPIRE = 8
    FLUSH = 9
    DUMP = 10
    X_PROMISC = 11
    X_PCHANGE = 12
    X_SPDUPDATE = 13
    X_SPDADD = 14
    X_SPDDELETE = 15
    X_SPDGET = 16
    X_SPDACQUIRE = 17
    X_SPDDUMP = 18
    X_SPDFLUSH = 19
    X_SPDSETIDX = 20
    X_SPDEXPIRE = 21
    X_SPDDELETE2 = 22
    X_NAT_T_NEW_MAPPING = 23  # Linux only
    X_MIGRATE = 24  # Linux only


class ExtType(enum.IntEnum):
    """sadb_ext_type.  Values 24-28 are FreeBSD's; Linux-only types are above 0xff."""

    RESERVED = 0
    SA = 1
    LIFETIME_CURRENT = 2
    LIFETIME_HARD = 3
    LIFETIME_SOFT = 4
    ADDRESS_SRC = 5
    ADDRESS_DST = 6
    ADDRESS_PROXY = 7
    KEY_AUTH = 8
    KEY_ENCRYPT = 9
    IDENTITY_SRC = 10
    IDENTITY_DST = 11
    SENSITIVITY = 12
    PROPOSAL = 13
    SUPPORTED_AUTH = 14
    SUPPORTED_ENCRYPT = 15
    SPIRANGE = 16
    X_KMPRIVATE = 17
    X_POLICY = 18
    X_SA2 = 19
    X_NAT_T_TYPE = 20
    X_NAT_T_SPORT = 21
    X_NAT_T_DPORT = 22
    X_NAT_T_OAI = 23  # Linux calls it X_NAT_T_OA
    X_NAT_T_OAR = 24  # FreeBSD only
    X_NAT_T_FRAG = 25  # FreeBSD only
    X_SA_REPLAY = 26  # FreeBSD only
    X_NEW_ADDRESS_SRC = 27  # FreeBSD only
    X_NEW_ADDRESS_DST = 28  # FreeBSD only
    X_SEC_CTX = LINUX_ONLY | 24
    X_KMADDRESS = LINUX_ONLY | 25
    X_FILTER = LINUX_ONLY | 26

    # Linux spelling of the single NAT-T original address.
    X_NAT_T_OA = 23


class SaType(enum.IntEnum):
    """sadb_msg_satype (RFC 2367 §2.3.2, KAME extensions)."""

    UNSPEC = 0
    AH = 2
    ESP = 3
    RSVP = 5
    OSPFV2 = 6
    RIPV2 = 7
    MIP = 8
    X_IPCOMP = 9
    X_TCPSIGNATURE = 11  # FreeBSD only


class SaState(enum.IntEnum):
    """sadb_sa_state (RFC 2367 §2.3.1)."""

    LARVAL = 0
    MATURE = 1
    DYING = 2
    DEAD = 3


class SaFlag(enum.IntFlag):
    """sadb_sa_flags bits (RFC 2367 and the KAME SADB_X_EXT_* flags)."""

    PFS = 0x0001  # the same bit as KAME's X_EXT_OLD
    X_EXT_IV4B = 0x0010
    X_EXT_DERIV = 0x0020
    X_EXT_CYCSEQ = 0x0040
    X_EXT_RAWCPI = 0x0080
    X_EXT_PRAND = 0x0100
    X_EXT_PZERO = 0x0200
    X_ESN = 0x0400  # FreeBSD 13+ SADB_X_SAFLAGS_ESN
    LINUX_NOPMTUDISC = 0x20000000
    LINUX_DECAP_DSCP = 0x40000000
    LINUX_NOECN = 0x80000000


X_EXT_OLD = 0x0001  # SaFlag.PFS: the same bit (a plain int: IntFlag arithmetic is slow)
X_EXT_PMASK = 0x0300
KEY_FLAGS_MAX = 0x0FFF


class AuthAlg(enum.IntEnum):
    """Authentication algorithms (sadb_sa_auth, sadb_alg_id in SUPPORTED_AUTH)."""

    NONE = 0
    MD5HMAC = 2
    SHA1HMAC = 3
    X_SHA2_256 = 5
    X_SHA2_384 = 6
    X_SHA2_512 = 7
    X_RIPEMD160HMAC = 8
    X_AES_XCBC_MAC = 9
    X_AES128GMAC = 11  # FreeBSD only
    X_AES192GMAC = 12  # FreeBSD only
    X_AES256GMAC = 13  # FreeBSD only
    X_CHACHA20POLY1305 = 14  # FreeBSD only
    X_MD5 = 249  # FreeBSD only: keyed MD5
    X_SHA = 250  # FreeBSD only: keyed SHA1
    X_NULL = 251
    X_TCP_MD5 = 252  # FreeBSD only
    X_SM3_256HMAC = LINUX_ONLY | 10  # Linux only


class EncAlg(enum.IntEnum):
    """Encryption algorithms (sadb_sa_encrypt for AH/ESP, SUPPORTED_ENCRYPT)."""

    NONE = 0
    DESCBC = 2
    DES3CBC = 3  # SADB_EALG_3DESCBC
    X_CAST128CBC = 6
    X_BLOWFISHCBC = 7
    NULL = 11
    X_AESCBC = 12  # also X_RIJNDAELCBC, X_AES
    X_AESCTR = 13
    X_CHACHA20POLY1305 = 15  # FreeBSD only (Linux 15 is CCM-12)
    X_AESGCM8 = 18
    X_AESGCM12 = 19
    X_AESGCM16 = 20
    X_CAMELLIACBC = 22
    X_AESGMAC = 23  # Linux: X_NULL_AES_GMAC
    X_AES_CCM_ICV8 = LINUX_ONLY | 14
    X_AES_CCM_ICV12 = LINUX_ONLY | 15
    X_AES_CCM_ICV16 = LINUX_ONLY | 16
    X_SM4CBC = LINUX_ONLY | 24
    X_SERPENTCBC = LINUX_ONLY | 252
    X_TWOFISHCBC = LINUX_ONLY | 253


class CompAlg(enum.IntEnum):
    """Compression algorithms (sadb_sa_encrypt of an IPComp SA); same in both dialects."""

    NONE = 0
    OUI = 1
    DEFLATE = 2
    LZS = 3
    LZJH = 4


class PolicyType(enum.IntEnum):
    """IPSEC_POLICY_* (sadb_x_policy_type)."""

    DISCARD = 0
    NONE = 1
    IPSEC = 2
    ENTRUST = 3
    BYPASS = 4


class Direction(enum.IntEnum):
    """IPSEC_DIR_* (sadb_x_policy_dir).  FWD exists only in the Linux dialect."""

    ANY = 0
    INBOUND = 1
    OUTBOUND = 2
    FWD = 3


class Level(enum.IntEnum):
    """IPSEC_LEVEL_* (sadb_x_ipsecrequest_level)."""

    DEFAULT = 0
    USE = 1
    REQUIRE = 2
    UNIQUE = 3


class Mode(enum.IntEnum):
    """IPSEC_MODE_* (sadb_x_sa2_mode, sadb_x_ipsecrequest_mode).

    Mode 3 means TCPMD5 to FreeBSD and BEET to Linux.
    """

    ANY = 0
    TRANSPORT = 1
    TUNNEL = 2
    TCPMD5 = 3  # FreeBSD only (internal)
    BEET = LINUX_ONLY | 3  # Linux only
    IPTFS = LINUX_ONLY | 4  # Linux only


class PolicyScope(enum.IntEnum):
    """IPSEC_POLICYSCOPE_* (FreeBSD sadb_x_policy_scope; Linux: reserved, always 0)."""

    ANY = 0
    GLOBAL = 1
    IFNET = 2
    PCB = 4


class IdentType(enum.IntEnum):
    """sadb_ident_type (RFC 2367 §2.3.5)."""

    RESERVED = 0
    PREFIX = 1
    FQDN = 2
    USERFQDN = 3
    X_ADDR = 4  # FreeBSD only: a sockaddr follows


class NatTType(enum.IntEnum):
    """UDP encapsulation types (sadb_x_nat_t_type_type)."""

    ESPINUDP_NON_IKE = 1
    ESPINUDP = 2


class IpProto(enum.IntEnum):
    """The IP protocol numbers that PF_KEY messages carry."""

    ICMP = 1
    TCP = 6
    UDP = 17
    IPV6_ICMP = 58
    ESP = 50
    AH = 51
    IPCOMP = 108
    GRE = 47
    ANY = 255


#: satype -> IP protocol of the SA (FreeBSD key_satype2proto).
SATYPE_PROTO: dict[SaType, int] = {
    SaType.AH: IpProto.AH,
    SaType.ESP: IpProto.ESP,
    SaType.X_IPCOMP: IpProto.IPCOMP,
    SaType.X_TCPSIGNATURE: IpProto.TCP,
}
PROTO_SATYPE: dict[int, SaType] = {proto: satype for satype, proto in SATYPE_PROTO.items()}
