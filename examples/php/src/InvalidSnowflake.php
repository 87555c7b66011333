<?php

// examples/php/src/InvalidSnowflake.php: 22P02 "invalid Discord user id:
// ...": not 17 to 20 digits, a leading zero, or above 2^64 - 1.

declare(strict_types=1);

namespace Lhdiscord;

class InvalidSnowflake extends InvalidValue
{
}
