<?php

// examples/php/src/ValueTooLong.php: 22001 "<what> is too long": Discord
// names over 32 characters, notification content over 40,000.

declare(strict_types=1);

namespace Lhdiscord;

class ValueTooLong extends LhdiscordException
{
}
