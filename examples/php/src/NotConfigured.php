<?php

// examples/php/src/NotConfigured.php: 55000: the server is not configured for
// this call (OAuth2 client settings missing, EncryptionKeyMissing). An
// operator's job.

declare(strict_types=1);

namespace Lhdiscord;

class NotConfigured extends LhdiscordException
{
}
