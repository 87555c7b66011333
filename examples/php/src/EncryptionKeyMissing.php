<?php

// examples/php/src/EncryptionKeyMissing.php: 55000 "cannot store OAuth
// tokens: lhdiscord.encryption_key is not set": tokens cannot be stored
// without the key.

declare(strict_types=1);

namespace Lhdiscord;

class EncryptionKeyMissing extends NotConfigured
{
}
